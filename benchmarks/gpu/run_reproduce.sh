#!/usr/bin/env bash
# The seed table on one GPU machine, in budgeted calls: `audio-ssl reproduce` (rows of experiments/reproduce.yaml
# that use the accelerator) on ESC-50 carried as parts, resumable from one call to the next while the machine stays
# warm (the work folder $WORK, default /tmp/audio-ssl-gpu, survives between calls only then). Run from the repo root:
#
#   benchmarks/gpu/run_reproduce.sh [--budget SECONDS] [--rows a,b] [--rows-file F] [--parallel N] [--workers N]
#   benchmarks/gpu/run_reproduce.sh --smoke          # same code path on CPU, generated tiny dataset, ~2-5 min on 2 cores
#
# Needs: the data parts in .gpu/esc50/part*/ (benchmarks/gpu/pack_esc50.py) on the first call, wheels in .whl/
# (fetch_wheels.sh) for what the machine lacks (installed once into $WORK/site, never into the system). $OUT
# receives: run.log, timings.json, nvidia-smi.csv (1 s samples), reproduce_summary.json/.md (every row from the
# result files, the data-stall fraction of the folds that recorded one) and results.tar.gz (results/ without
# checkpoints or embedding caches, plus per-stage logs). Every stage has a timeout inside --budget (default 470 s
# from the start of this script); whatever happens, the packing step runs. Exit status: 0 every selected row is
# complete, 3 the budget stopped it (call again: finished folds are skipped, a stopped stage resumes from
# last.ckpt), 1 something failed.
set -uo pipefail

ROOT="$PWD"
SMOKE=0
BUDGET=470
WORKERS=3
PARALLEL=""
ROWS=""
ROWS_FILE=""
PRECISION=bf16-mixed
while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --budget) BUDGET="$2"; shift ;;
    --rows) ROWS="$2"; shift ;;
    --rows-file) ROWS_FILE="$2"; shift ;;
    --parallel) PARALLEL="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -f "$ROOT/experiments/reproduce.yaml" && -d "$ROOT/audio_ssl" ]] || { echo "run this from the repo root" >&2; exit 2; }
# options checked before any stage spends device time
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "--budget $BUDGET: a whole number of seconds" >&2; exit 2; }
((BUDGET >= 90)) || { echo "--budget $BUDGET: under 90 s leaves no time to train after the data stages" >&2; exit 2; }
if [[ -n "$ROWS" ]]; then
  "${PYTHON:-python3}" - "${ROWS_FILE:-$ROOT/experiments/reproduce.yaml}" "$ROWS" <<'EOF' || exit 2
import sys, yaml
names = [r.get("name") for r in (yaml.safe_load(open(sys.argv[1])) or {}).get("rows", [])]
wanted = [w.strip() for w in sys.argv[2].split(",") if w.strip()]
unknown = [w for w in wanted if w not in names]
if unknown or not wanted:
    sys.exit(f"--rows {sys.argv[2]!r}: unknown row(s) {unknown}; the rows of {sys.argv[1]} are {names}")
EOF
fi

START=$(date +%s)
PY="${PYTHON:-python3}"
if ((SMOKE)); then
  OUT="${OUT:-$(mktemp -d /tmp/audio-ssl-smoke-out.XXXXXX)}"
  WORK="${WORK:-$(mktemp -d /tmp/audio-ssl-smoke-work.XXXXXX)}"
  PRECISION=""
  WORKERS=0
else
  OUT="${OUT:-$(mktemp -d /tmp/audio-ssl-gpu-out.XXXXXX)}"
  WORK="${WORK:-/tmp/audio-ssl-gpu}"
fi
mkdir -p "$OUT" "$WORK/logs"
RESULTS="$WORK/results"
TIMINGS="$WORK/timings.tsv"
: >"$TIMINGS"
exec > >(tee -a "$OUT/run.log") 2>&1

export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MPLBACKEND=Agg
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export AUDIO_SSL_CACHE="$WORK/cache"
SITE="$WORK/site"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ((SMOKE)); then
  # rehearse the GPU machine: neither wandb nor librosa is installed there
  export PYTHONPATH="$ROOT/benchmarks/gpu/hide:$PYTHONPATH" AUDIO_SSL_HIDE_PACKAGES="${AUDIO_SSL_HIDE_PACKAGES-wandb,librosa}"
fi

now() { date +%s.%N; }
elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[run_reproduce +$(elapsed)s] $*"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TIMINGS"; }  # name rc start end
# seconds left before the point `reserve` seconds ahead of the end of the budget
left() { echo $((START + BUDGET - $1 - $(date +%s))); }
# stage NAME CAP RESERVE cmd...: run cmd under `timeout min(CAP, left(RESERVE))`, log and time it (cmd: a program
# or an exported shell function, run through bash)
stage() {
  local name=$1 cap=$2 reserve=$3 t s rc
  shift 3
  t=$(left "$reserve")
  ((t < cap)) || t=$cap
  s=$(now)
  if ((t <= 0)); then
    say "stage $name: skipped, no time left in the budget"
    record "$name" skipped "$s" "$(now)"
    return 124
  fi
  say "stage $name: start (timeout ${t}s)"
  if [[ "$(type -t "$1")" == function ]]; then
    timeout -k 10 "$t" bash -c '"$@"' _ "$@"
  else
    timeout -k 10 "$t" "$@"
  fi
  rc=$?
  record "$name" "$rc" "$s" "$(now)"
  say "stage $name: rc=$rc after $(awk -v a="$s" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"
  return $rc
}

SMI_PID=""
PACKED=0
STATUS=0
pack() {
  ((PACKED)) && return
  PACKED=1
  trap - EXIT INT TERM
  [[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2>/dev/null
  say "packing into $OUT"
  local s
  s=$(now)
  cp "$RESULTS"/reproduce_summary.* "$OUT/" 2>/dev/null
  local skip=(--exclude='*.ckpt' --exclude='*.tmp' --exclude='.*.tmp' --exclude='embeddings' --exclude='cache')
  tar -C "$WORK" -czf "$OUT/results.tar.gz" "${skip[@]}" $( [[ -d "$RESULTS" ]] && echo results) logs 2>/dev/null
  if (($(stat -c %s "$OUT/results.tar.gz") > 15 * 1024 * 1024)); then
    say "results.tar.gz is over 15 MiB: packing again without PNGs"
    tar -C "$WORK" -czf "$OUT/results.tar.gz" "${skip[@]}" --exclude='*.png' \
      $( [[ -d "$RESULTS" ]] && echo results) logs 2>/dev/null
  fi
  record pack 0 "$s" "$(now)"
  "$PY" - "$TIMINGS" "$OUT/timings.json" "$START" "$BUDGET" "$SMOKE" <<'EOF' || cp "$TIMINGS" "$OUT/timings.tsv"
import json, sys
tsv, out, start, budget, smoke = sys.argv[1:]
stages = []
for line in open(tsv):
    name, rc, s, e = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "rc": rc, "start_s": round(float(s) - float(start), 2),
                   "seconds": round(float(e) - float(s), 2)})
json.dump({"budget_s": int(budget), "smoke": smoke == "1", "stages": stages}, open(out, "w"), indent=2)
EOF
  say "done in $(elapsed)s, exit status $STATUS; files in $OUT:"
  ls -l "$OUT"
}
trap 'STATUS=${STATUS:-1}; pack; exit $STATUS' EXIT
trap 'say "interrupted"; STATUS=130; exit 130' INT TERM

say "root $ROOT, work $WORK, out $OUT, python $PY, budget ${BUDGET}s, smoke $SMOKE"

# (a) wheels for what the machine lacks, into $SITE (never into the system), once per warm machine
if ((!SMOKE)) && [[ -f "$SITE/.installed" ]]; then
  say "stage wheels: skipped (installed by an earlier call into $SITE)"
elif ((!SMOKE)) && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  stage wheels 90 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$ROOT"/.whl/*.whl && touch "$SITE/.installed" || STATUS=1
else
  say "stage wheels: skipped ($( ((SMOKE)) && echo 'smoke: this interpreter has them' || echo 'no .whl/*.whl'))"
fi

# (b) the dataset: generated and split into parts (smoke), then assembled from the parts, once per warm machine
PARTS="${PARTS_DIR:-$ROOT/.gpu/esc50}"
DATA="$WORK/esc50"
export ROOT WORK PY SMOKE PARTS DATA
make_data() {
  "$PY" -c 'import sys; from audio_ssl.data.synthetic import make_synthetic_esc50
make_synthetic_esc50(sys.argv[1], num_classes=4, clips_per_class=5, seconds=1.0)' "$WORK/synthetic" &&
    "$PY" "$ROOT/benchmarks/gpu/pack_esc50.py" --data-dir "$WORK/synthetic" --out "$PARTS" --max-mib 0.25
}
export -f make_data
if ((SMOKE)); then
  PARTS="$WORK/parts"
  [[ -f "$PARTS/part1/PARTS.json" ]] || stage make_data 120 60 make_data || STATUS=1
fi
assemble() {
  rm -rf "$DATA" && mkdir -p "$DATA" || return 1
  local p
  for p in "$PARTS"/part*/; do
    cp -al "$p." "$DATA/" 2>/dev/null || cp -a "$p." "$DATA/" || return 1
  done
  "$PY" - "$DATA" <<'EOF' || return 1
import csv, json, pathlib, sys
data = pathlib.Path(sys.argv[1])
manifest = json.loads((data / "PARTS.json").read_text())
rows = list(csv.DictReader(open(data / "meta" / "esc50.csv")))
missing = [r["filename"] for r in rows if not (data / "audio" / r["filename"]).is_file()]
count = sum(1 for _ in (data / "audio").iterdir())
print(f"assembled {count} audio files ({manifest['total_audio_files']} expected from {manifest['num_parts']} parts), "
      f"{len(rows)} metadata rows, {len(missing)} missing")
if missing or count != manifest["total_audio_files"]:
    print("missing (first 10):", missing[:10], "- were all parts carried to this machine?")
    sys.exit(1)
EOF
  touch "$DATA/.assembled"
}
export -f assemble
DATA_OK=0
if [[ -f "$DATA/.assembled" ]]; then
  say "stage assemble: skipped ($DATA was assembled and checked by an earlier call)"
  DATA_OK=1
else
  stage assemble 90 60 assemble && DATA_OK=1 || STATUS=1
fi

# (c) GPU monitor: utilisation and memory, one sample a second, for the whole call
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$OUT/nvidia-smi.csv" 2>&1 &
  SMI_PID=$!
else
  say "no nvidia-smi on this machine"
fi

# (d) the waveform cache and the device check, once per warm machine, before any fold starts
prepare() {
  "$PY" -m audio_ssl.utils.environment || return 1
  "$PY" - "$DATA" "$SMOKE" <<'EOF'
import sys, time
import torch
from audio_ssl.data import ESC50DataModule
data, smoke = sys.argv[1], sys.argv[2] == "1"
print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
if not smoke and not torch.cuda.is_available():
    sys.exit("no CUDA device: refusing to train the recipes on CPU")
start = time.perf_counter()
dm = ESC50DataModule(data_dir=data, sample_rate=16000, num_workers=16)
dm.prepare_data()
print(f"waveform caches ({len(dm.cache.caches)} fold caches, {len(dm.cache)} clips) ready in {time.perf_counter() - start:.1f}s")
EOF
}
export -f prepare
PREP_OK=0
if ((DATA_OK)) && [[ -f "$WORK/.prepared" ]]; then
  say "stage cache: skipped (caches built and the device checked by an earlier call)"
  PREP_OK=1
elif ((DATA_OK)); then
  stage cache 120 60 prepare && { PREP_OK=1; touch "$WORK/.prepared"; } || STATUS=1
fi

# (e) audio-ssl reproduce within what is left of the budget: it stops itself 20 s before the hard timeout and
# writes its summary; the next call skips finished folds, and a stopped stage resumes from its last.ckpt
REPRO=(-m audio_ssl.cli reproduce --out "$RESULTS" --data-dir "$DATA" --no-readme
  --set "data.init_args.num_workers=$WORKERS" --set trainer.enable_progress_bar=false)
# not --smoke: every Lightning stage on the GPU (Lightning refuses to start without one), in bf16
if ((SMOKE)); then REPRO+=(--smoke); else REPRO+=(--set trainer.accelerator=gpu --set "trainer.precision=$PRECISION"); fi
[[ "${ALL_ROWS:-0}" == 1 ]] || REPRO+=(--gpu-rows)  # MFCC + logistic regression (gpu: false) runs on the CPU machine
[[ -n "$ROWS" ]] && REPRO+=(--rows "$ROWS")
[[ -n "$ROWS_FILE" ]] && REPRO+=(--rows-file "$ROWS_FILE")
[[ -n "$PARALLEL" ]] && REPRO+=(--parallel "$PARALLEL")
PACK_RESERVE=30
if [[ ! -d "$RESULTS" && -d "$ROOT/.gpu/results" ]]; then  # a cold machine: the results of earlier calls, carried
  cp -a "$ROOT/.gpu/results" "$RESULTS" && say "results seeded from .gpu/results: finished folds are kept, a fold" \
    "that was running restarts (no checkpoints travel)"
fi
if ((PREP_OK)); then
  T=$(left $PACK_RESERVE)
  if ((T > 40)); then
    REPRO+=(--budget-minutes "$(awk -v t="$T" 'BEGIN { printf "%.2f", (t - 20) / 60 }')")
    LOG="$WORK/logs/reproduce-$(date +%Y%m%d-%H%M%S).log"
    stage reproduce "$T" "$PACK_RESERVE" "$PY" "${REPRO[@]}" >"$LOG" 2>&1
    rc=$?
    tail -n 40 "$LOG"
    case $rc in
      0) ;;
      3) say "the budget stopped the run: call again to continue"; ((STATUS)) || STATUS=3 ;;
      *) STATUS=1 ;;
    esac
  else
    say "stage reproduce: skipped, only ${T}s left in the budget"
    STATUS=1
  fi
fi
exit $STATUS
