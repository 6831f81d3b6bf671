#!/usr/bin/env bash
# Supervised rows of the seed table on one GPU, in one command: experiments/supervised_resnet34.yaml on the 5 ESC-50
# folds as 5 parallel `audio-ssl cv` processes sharing the GPU, the CV summary, and the TTA row (the final weights
# of every fold re-tested with N circular-shift views, no retraining). Run from the repo root:
#
#   benchmarks/gpu/run_supervised.sh [--epochs N] [--budget SECONDS] [--tta-views N] [--workers N] [--name NAME]
#   benchmarks/gpu/run_supervised.sh --smoke          # same code path on CPU, generated tiny dataset, ~2 min
#
# Needs: the data parts in .gpu/esc50/part*/ (benchmarks/gpu/pack_esc50.py), wheels in .whl/ (fetch_wheels.sh) for
# what the machine lacks (installed into /tmp/site, never into the system). $OUT receives at most 5 files:
# run.log, timings.json, nvidia-smi.csv, results.tar.gz (results/<name>*/ without checkpoints + per-process logs).
# Every stage has a timeout inside --budget (default 480 s, measured from the start of this script); whatever
# happens, the packing step runs. Exit status 0 only when every fold, the summary and the TTA row succeeded.
set -uo pipefail

ROOT="$PWD"
SMOKE=0
EPOCHS=""
BUDGET=480
TTA_VIEWS=10
WORKERS=3
NAME=supervised_resnet34
CONFIG=experiments/supervised_resnet34.yaml
PRECISION=bf16-mixed
FOLDS="1 2 3 4 5"
while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --epochs) EPOCHS="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --tta-views) TTA_VIEWS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --name) NAME="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -f "$ROOT/$CONFIG" && -d "$ROOT/audio_ssl" ]] || { echo "run this from the repo root" >&2; exit 2; }

START=$(date +%s)
PY="${PYTHON:-python3}"
if ((SMOKE)); then
  OUT="${OUT:-$(mktemp -d /tmp/audio-ssl-smoke-out.XXXXXX)}"
  WORK="${WORK:-$(mktemp -d /tmp/audio-ssl-smoke-work.XXXXXX)}"
  PRECISION=32-true
  WORKERS=0
  [[ -n "$EPOCHS" ]] || EPOCHS=2
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
say() { echo "[run_supervised +$(elapsed)s] $*"; }
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
  tar -C "$WORK" -czf "$OUT/results.tar.gz" --exclude='*.ckpt' --exclude='*.tmp' --exclude='.*.tmp' \
    $( [[ -d "$RESULTS" ]] && echo results) logs 2>/dev/null
  if (($(stat -c %s "$OUT/results.tar.gz") > 15 * 1024 * 1024)); then
    say "results.tar.gz is over 15 MiB: packing again without PNGs"
    tar -C "$WORK" -czf "$OUT/results.tar.gz" --exclude='*.ckpt' --exclude='*.tmp' --exclude='*.png' \
      $( [[ -d "$RESULTS" ]] && echo results) logs 2>/dev/null
  fi
  record pack 0 "$s" "$(now)"
  "$PY" - "$TIMINGS" "$OUT/timings.json" "$START" "$BUDGET" "${EPOCHS:-recipe}" "$SMOKE" <<'EOF' || cp "$TIMINGS" "$OUT/timings.tsv"
import json, sys
tsv, out, start, budget, epochs, smoke = sys.argv[1:]
stages = []
for line in open(tsv):
    name, rc, s, e = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "rc": rc, "start_s": round(float(s) - float(start), 2),
                   "seconds": round(float(e) - float(s), 2)})
json.dump({"budget_s": int(budget), "epochs": epochs, "smoke": smoke == "1", "stages": stages}, open(out, "w"), indent=2)
EOF
  say "done in $(elapsed)s, exit status $STATUS; files in $OUT:"
  ls -l "$OUT"
}
trap 'STATUS=${STATUS:-1}; pack; exit $STATUS' EXIT
trap 'say "interrupted"; STATUS=130; exit 130' INT TERM

say "root $ROOT, work $WORK, out $OUT, python $PY, budget ${BUDGET}s, epochs ${EPOCHS:-recipe}, smoke $SMOKE"

# (a) wheels for what the machine lacks, into $SITE (never into the system)
if ((!SMOKE)) && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  stage wheels 90 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$ROOT"/.whl/*.whl || STATUS=1
else
  say "stage wheels: skipped ($( ((SMOKE)) && echo 'smoke: this interpreter has them' || echo 'no .whl/*.whl'))"
fi

# (b) the dataset: generated and split into parts (smoke), then assembled from the parts
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
  stage make_data 120 60 make_data || STATUS=1
fi
assemble() {
  rm -rf "$DATA" && mkdir -p "$DATA" || return 1
  local p
  for p in "$PARTS"/part*/; do
    cp -al "$p." "$DATA/" 2>/dev/null || cp -a "$p." "$DATA/" || return 1
  done
  "$PY" - "$DATA" <<'EOF'
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
}
export -f assemble
DATA_OK=0
stage assemble 90 60 assemble && DATA_OK=1 || STATUS=1

# (c) GPU monitor
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$OUT/nvidia-smi.csv" 2>&1 &
  SMI_PID=$!
else
  say "no nvidia-smi on this machine"
fi

# (d) the waveform cache, once, before the folds start (and the device check)
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
    sys.exit("no CUDA device: refusing to train the recipe on CPU")
start = time.perf_counter()
dm = ESC50DataModule(data_dir=data, sample_rate=16000, num_workers=16)
dm.prepare_data()
print(f"waveform caches ({len(dm.cache.caches)} fold caches, {len(dm.cache)} clips) ready in {time.perf_counter() - start:.1f}s")
EOF
}
export -f prepare
PREP_OK=0
((DATA_OK)) && { stage cache 120 60 prepare && PREP_OK=1 || STATUS=1; }

# (e) the folds, in parallel, then one cv call that skips them and writes summary.json / folds.csv / analysis
CV=(-m audio_ssl.cli cv --config "$CONFIG" --name "$NAME" --out "$RESULTS" --no-wandb
  --set "data.init_args.data_dir=$DATA" --set "data.init_args.num_workers=$WORKERS"
  --set "trainer.precision=$PRECISION" --set trainer.enable_progress_bar=false
  --set checkpoint.every_n_epochs=25)
[[ -n "$EPOCHS" ]] && CV+=(--set "trainer.max_epochs=$EPOCHS")
for kv in ${EXTRA_SETS:-}; do CV+=(--set "$kv"); done  # e.g. EXTRA_SETS="model.init_args.time_mask=30"
if ((SMOKE)); then
  CV+=(--set data.init_args.clip_seconds=1.0 --set data.init_args.batch_size=8
    --set "model.init_args.encoder.init_args.widths=[8,16,32,64]" --set model.init_args.frontend.init_args.n_mels=32
    --set model.init_args.freq_mask=8 --set model.init_args.time_mask=8 --set trainer.log_every_n_steps=1)
fi
FOLD_RESERVE=75  # summary and TTA (in parallel) + packing
if ((PREP_OK)); then
  T=$(left $FOLD_RESERVE)
  ((T > 0)) || T=1
  say "stage folds: ${FOLDS// /,} in parallel (timeout ${T}s each), logs in $WORK/logs/fold*.log"
  s=$(now)
  declare -A PIDS
  for k in $FOLDS; do
    timeout -k 10 "$T" "$PY" "${CV[@]}" --folds "$k" --no-analysis >"$WORK/logs/fold$k.log" 2>&1 &
    PIDS[$k]=$!
  done
  for k in $FOLDS; do
    wait "${PIDS[$k]}"
    rc=$?
    record "fold$k" "$rc" "$s" "$(now)"
    say "fold $k: rc=$rc; $(tail -n 1 "$WORK/logs/fold$k.log")"
    ((rc == 0)) || { STATUS=1; tail -n 25 "$WORK/logs/fold$k.log"; }
  done
  record folds all "$s" "$(now)"
fi

FINISHED=$(ls "$RESULTS/$NAME"/fold*/result.json 2>/dev/null | sed -E 's#.*/fold([0-9]+)/result.json#\1#' | sort -n | paste -sd, -)
if [[ -n "$FINISHED" ]]; then
  say "finished folds: $FINISHED"
  stage summary 120 15 "$PY" "${CV[@]}" --folds "$FINISHED" >"$WORK/logs/summary.log" 2>&1 &
  SUM_PID=$!
  if ((TTA_VIEWS > 1)); then
    stage tta 120 15 "$PY" "$ROOT/benchmarks/gpu/tta_eval.py" --run-dir "$RESULTS/$NAME" --tta-views "$TTA_VIEWS" \
      >"$WORK/logs/tta.log" 2>&1 || STATUS=1
    tail -n 3 "$WORK/logs/tta.log"
  fi
  wait "$SUM_PID" || STATUS=1
  tail -n 12 "$WORK/logs/summary.log"
else
  say "no finished fold: no summary, no TTA row"
  STATUS=1
fi
[[ "$FINISHED" == "${FOLDS// /,}" ]] || STATUS=1
exit $STATUS
