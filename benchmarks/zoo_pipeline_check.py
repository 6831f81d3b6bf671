"""Pipeline check of the model zoo on real ESC-50 with random weights (a pipeline check, not a result).

For each encoder of the zoo (AST, wav2vec 2.0, HuBERT, WavLM, EfficientNet-B0, ResNet-18, CLAP zero-shot), with no
network:

1. the real-size architecture with random weights is written where the recipe's hub id would be found, in the form
   a user's local copy takes: the Hugging Face encoders as a ``save_pretrained`` folder of transformers' default
   config of the family (``zoo_embed.write_default_architecture``, as ``zoo_embed.py --architecture defaults``),
   the timm CNNs as a ``.safetensors`` file of ``timm.create_model(name, pretrained=False)`` (3 channels, its
   1000-class classifier: it loads through TimmCNN's strict local-file path), CLAP as a ``save_pretrained``
   folder of a default ``ClapConfig`` ClapModel with a processor whose tokenizer is a tiny byte-level BPE (no
   merges: the real RoBERTa vocabulary is not available offline; the JSON says so). The seed (``--seed``,
   default 20261130) is not the recipes' ``seed_everything`` (0), so these "pretrained" weights differ from the
   probe's random-init control.
2. ``audio-ssl cv --folds 1`` runs the probe pipeline (``<x>_probe.yaml``, ``max_clips`` clips per fold), the
   fine-tune pipeline (``<x>_finetune.yaml``, ``--steps`` optimizer steps of 4 clips, one validation batch, float32
   on the CPU; the whole held-out fold is tested, 400 clips: ``audio-ssl cv`` refuses a partial test loop) and, for CLAP, ``clap_zeroshot.yaml`` (``max_clips``), each in a subprocess
   with ``HF_HUB_OFFLINE=1``; recorded: return code, wall time, the accuracy (chance level is expected: random
   weights, a few clips) and the results folder.
3. parameters and clips/s of ``embed`` on 5 s 16 kHz clips (batch 8, CPU, float32, one warm-up call, the median
   of ``--repeats``) from ``zoo_embed.bench_config`` (the Lightning recipe built with random weights; for the
   Hugging Face encoders from the folder written in 1). CLAP has no Lightning recipe: its audio embedding
   (``ClapZeroShot.audio_embeddings``: resampling to 48 kHz, the feature extractor, the audio tower and
   projection) is timed the same way (``common.time_repeats``).

    python benchmarks/zoo_pipeline_check.py --threads 1 --data-dir ../shared/data/esc50-16k \\
        --work /tmp/zoo-check --out results/cpu-2026-11-30/bench/zoo_pipeline_check.json
    python benchmarks/zoo_pipeline_check.py --encoders resnet18_imagenet --max-clips 5 --steps 1 --repeats 1 ...

Probe runs point the model at the weights with ``--pipeline-set model_overrides=[...]`` (the model's own
overrides, which the random-init control then overrides): a run-level ``--set ...pretrained=FILE`` would come
after the control's ``random_init_overrides`` and give the control the same weights (refused by the pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_embed  # noqa: E402
from common import REPO_ROOT, environment, format_table, median, quiet_lightning, time_repeats, write_json  # noqa: E402

NOTE = "pipeline check with random weights, not a result"
ZOO = REPO_ROOT / "experiments" / "zoo"
HF_ENCODERS = ("ast", "wav2vec2", "hubert", "wavlm")
TIMM_ENCODERS = ("efficientnet_b0", "resnet18_imagenet")
ENCODERS = (*HF_ENCODERS, *TIMM_ENCODERS, "clap")
DEFAULT_SEED = 20261130
TINY_TOKENIZER_NOTE = ("tiny tokenizer: byte-level BPE over the 256 byte symbols, no merges (the LAION-CLAP RoBERTa "
                       "vocabulary needs the network); the text tower is the real size")
#: Lightning overrides of the fine-tune check besides --steps (a few steps, one validation batch of 4 clips, float32
#: on the CPU).
#: The test loop is not limited: ``audio-ssl cv`` checks that the held-out fold's every clip was tested once.
FINETUNE_TEST_BATCHES = 2
FINETUNE_SETS = ("trainer.limit_val_batches=1", "data.init_args.batch_size=4",
                 "trainer.precision=32-true", "trainer.accelerator=cpu", "trainer.devices=1",
                 "data.init_args.num_workers=0", "trainer.enable_progress_bar=false")


@dataclass
class Weights:
    """Weights of one encoder written for the check: ``path`` (folder or file) and how they were made."""

    encoder: str
    path: Path
    description: str
    parameters: int | None = None
    notes: list[str] = field(default_factory=list)


def kind(encoder: str) -> str:
    if encoder in HF_ENCODERS:
        return "hf"
    if encoder in TIMM_ENCODERS:
        return "timm"
    if encoder == "clap":
        return "clap"
    raise ValueError(f"unknown encoder {encoder!r}; one of {', '.join(ENCODERS)}")


def recipe(encoder: str, stage: str) -> Path:
    """``experiments/zoo/<encoder>_<stage>.yaml`` (stage: probe, finetune; CLAP: clap_zeroshot.yaml)."""
    return ZOO / ("clap_zeroshot.yaml" if kind(encoder) == "clap" else f"{encoder}_{stage}.yaml")


def _timm_name(encoder: str) -> str:
    return str(zoo_embed._encoder_block(recipe(encoder, "finetune"))["init_args"]["name"])


# ---------------------------------------------------------------------------------------------- 1. weights
def write_weights(encoder: str, work: Path, seed: int = DEFAULT_SEED) -> Weights:
    """Write the real-size architecture of ``encoder`` with random weights (seeded) under ``work/weights``."""
    root = work / "weights"
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind(encoder) == "hf":
        import transformers

        hub = zoo_embed.hub_id(recipe(encoder, "finetune"))
        folder = root / encoder
        config_cls = zoo_embed.write_default_architecture(hub, folder)
        model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(folder))
        model.save_pretrained(folder)
        return Weights(encoder, folder, f"transformers {config_cls}() defaults in place of {hub}, random (seed "
                       f"{seed}), save_pretrained folder", sum(p.numel() for p in model.parameters()))
    if kind(encoder) == "timm":
        import timm
        from safetensors.torch import save_file

        name = _timm_name(encoder)
        model = timm.create_model(name, pretrained=False)
        path = root / f"{encoder}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return Weights(encoder, path, f"timm.create_model({name!r}, pretrained=False) (3 channels, "
                       f"{model.num_classes} classes), random (seed {seed}), .safetensors", count(model))
    return write_clap(root / "clap", seed)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def byte_level_tokenizer():
    """A RoBERTa tokenizer over the 256 byte-level symbols and no merges: every byte is one token (offline)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(ByteLevel.alphabet())]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def write_clap(folder: Path, seed: int = DEFAULT_SEED) -> Weights:
    """A default-``ClapConfig`` ClapModel (random, seeded) and a processor (LAION-CLAP unfused's feature extractor
    settings, the byte-level tokenizer) written with ``save_pretrained``."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    model = ClapModel(ClapConfig()).eval()
    model.save_pretrained(folder)
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=byte_level_tokenizer()).save_pretrained(folder)
    return Weights("clap", folder, f"transformers ClapConfig() defaults in place of laion/clap-htsat-unfused, random "
                   f"(seed {seed}), save_pretrained folder", count(model), [TINY_TOKENIZER_NOTE])


# ---------------------------------------------------------------------------------------------- 2. pipelines
def model_args(encoder: str, weights: Path) -> list[str]:
    """The Lightning CLI arguments that point a recipe's encoder at ``weights`` (HF folder or timm file)."""
    if kind(encoder) == "hf":
        return [zoo_embed.MODEL_ARG, str(weights)]
    return [zoo_embed.PRETRAINED_ARG, str(weights)]


def pipeline_commands(encoder: str, weights: Path, data_dir: Path, out: Path, max_clips: int, steps: int,
                      sets: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """``{pipeline: argv of audio-ssl}`` for the encoder: ``probe`` (``cv`` of the ``frozen_probe`` recipe on
    ``max_clips`` clips per fold), ``finetune`` (``fit`` of the fine-tune recipe for ``steps`` steps, one validation
    batch) and ``finetune_test`` (``test`` of its last.ckpt on ``FINETUNE_TEST_BATCHES`` batches of fold 1: a
    fine-tune ``cv`` tests every clip of the fold, hours for a transformer on this CPU), or ``zeroshot`` for CLAP.
    ``sets``: extra ``--set KEY=VALUE`` items for the ``cv`` runs and ``--KEY VALUE`` for the others."""
    common = ["--folds", "1", "--out", str(out), "--no-wandb", "--set", f"data.init_args.data_dir={data_dir}"]
    common += [part for item in sets for part in ("--set", item)]
    if kind(encoder) == "clap":
        return {"zeroshot": ["cv", "--config", str(recipe(encoder, "zeroshot")), "--name", "clap_zeroshot", *common,
                             "--set", f"model={weights}", "--set", f"max_clips={max_clips}", "--set", "device=cpu"]}
    overrides = json.dumps(model_args(encoder, weights))
    probe = ["cv", "--config", str(recipe(encoder, "probe")), "--name", f"{encoder}_probe", *common,
             "--pipeline-set", f"max_clips={max_clips}", "--pipeline-set", f"model_overrides={overrides}"]
    run = out / f"{encoder}_finetune"
    lightning = [*model_args(encoder, weights), "--data.init_args.data_dir", str(data_dir),
                 "--data.init_args.test_fold", "1", "--run_name", f"{encoder}_finetune",
                 "--checkpoint.dirpath", str(run / "checkpoints"), "--trainer.default_root_dir", str(run),
                 "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                  "init_args": {"save_dir": str(run), "name": "csv"}}]),
                 *(p for item in (*FINETUNE_SETS, *sets) for p in ("--" + item.split("=", 1)[0], item.split("=", 1)[1]))]
    finetune = ["fit", "--config", str(recipe(encoder, "finetune")), *lightning, "--trainer.max_steps", str(steps),
                "--checkpoint.existing_run", "overwrite"]
    test = ["test", "--config", str(recipe(encoder, "finetune")), *lightning,
            "--trainer.limit_test_batches", str(FINETUNE_TEST_BATCHES), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    return {"probe": probe, "finetune": finetune, "finetune_test": test}


def run_pipeline(argv: list[str], run_dir: Path, log: Path, threads: int | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run ``python -m audio_ssl.cli cv ARGV`` in a subprocess (no network); return code, wall time, the accuracy
    of every variant (from ``summary.json``) and the results folder. Output goes to ``log``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "audio_ssl.cli", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    record: dict[str, Any] = {"command": " ".join(["audio-ssl", *argv]), "returncode": code,
                              "wall_s": wall, "results": str(run_dir), "log": str(log)}
    summary = run_dir / "summary.json"
    if summary.is_file():
        variants = json.loads(summary.read_text())["variants"]
        record["accuracy"] = {name: v["metrics"]["acc"]["mean"] for name, v in variants.items()}
        record["test_clips"] = {name: v.get("num_test_clips") for name, v in variants.items()}
        record["protocol"] = {name: v.get("protocol") for name, v in variants.items()}
    tested = re.findall(r"test/acc\s*[│|]\s*([0-9.]+)", text)
    if argv[0] == "test" and tested:
        record["accuracy"] = {"fine-tuned": float(tested[-1])}
    if code != 0:
        record["error_tail"] = text.splitlines()[-15:]
    else:
        printed = [line for line in text.splitlines() if re.search(r"\d+\.\d", line) and "|" in line]
        record["printed"] = printed[-4:]
    return record


def check_pipelines(encoder: str, weights: Path, data_dir: Path, work: Path, max_clips: int, steps: int,
                    threads: int | None = None, sets: tuple[str, ...] = (), timeout: float | None = None
                    ) -> dict[str, dict]:
    """Every pipeline of ``encoder`` end to end (see :func:`pipeline_commands`), results under ``work/results``."""
    out = work / "results"
    records = {}
    for name, argv in pipeline_commands(encoder, weights, data_dir, out, max_clips, steps, sets).items():
        run_name = argv[argv.index("--name") + 1] if "--name" in argv else argv[argv.index("--run_name") + 1]
        records[name] = run_pipeline(argv, out / run_name, work / "logs" / f"{run_name}_{argv[0]}.log", threads,
                                     timeout)
        r = records[name]
        print(f"{encoder} {name}: return code {r['returncode']}, {r['wall_s']:.0f} s, accuracy "
              f"{r.get('accuracy')}", flush=True)
    return records


# ---------------------------------------------------------------------------------------------- 3. embed
def measure_embed(encoder: str, weights: Path, repeats: int, batch: int = 8, seconds: float = 5.0,
                  warmup: int = 1, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parameters and embed clips/s on the CPU (float32): ``zoo_embed.bench_config`` on the fine-tune recipe
    (random weights; HF encoders built from ``weights``' config), or the CLAP audio embedding."""
    if kind(encoder) == "clap":
        return measure_clap(weights, repeats, batch, seconds, warmup)
    override = ["--trainer.precision", "32-true", *(model_args(encoder, weights) if kind(encoder) == "hf" else [])]
    override += [part for item in sets for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    args = argparse.Namespace(device="cpu", dtype="fp32", batch=batch, seconds=seconds, repeats=repeats,
                              warmup=warmup, architecture="hub", override=override)
    row = zoo_embed.bench_config(recipe(encoder, "finetune"), args, weights.parent)
    return {k: row[k] for k in ("encoder", "encoder_params", "model_params", "embedding_dim", "input_shape", "batch",
                                "clip_seconds", "sample_rate", "embed_median_s", "embed_clips_per_s",
                                "encoder_clips_per_s", "embed_wall_s")}


def measure_clap(folder: Path, repeats: int, batch: int = 8, seconds: float = 5.0, warmup: int = 1,
                 sample_rate: int = 16000) -> dict[str, Any]:
    """CLAP's audio embedding of ``batch`` clips of ``seconds`` at ``sample_rate`` (resampled to the model's rate,
    feature extractor, audio tower, projection): parameters and clips/s."""
    from audio_ssl.models.clap import load_clap

    clap = load_clap(str(folder), device="cpu")
    model = clap.model
    audio = 0.1 * torch.randn(batch, int(seconds * sample_rate), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        wall = time_repeats(lambda: clap.audio_embeddings(audio, sample_rate), repeats, warmup).wall
        dim = clap.audio_embeddings(audio[:1], sample_rate).shape[-1]
    audio_params = count(model.audio_model) + count(model.audio_projection)
    return {"encoder": "ClapModel audio tower + projection", "encoder_params": audio_params,
            "model_params": count(model), "embedding_dim": int(dim), "input_shape": list(audio.shape),
            "batch": batch, "clip_seconds": seconds, "sample_rate": sample_rate,
            "embed_median_s": median(wall), "embed_clips_per_s": batch / median(wall), "embed_wall_s": wall}


# ---------------------------------------------------------------------------------------------- main
def table(rows: list[dict]) -> str:
    def acc(record: dict | None) -> str:
        if not record:
            return "-"
        if record["returncode"] != 0:
            return f"rc {record['returncode']}"
        accs = record.get("accuracy") or {}
        return " / ".join(f"{100 * a:.1f}" for a in accs.values()) + f" ({record['wall_s']:.0f} s)"

    body = []
    for r in rows:
        embed = r.get("embed") or {}
        pipes = r.get("pipelines") or {}
        params = embed.get("encoder_params")
        body.append([r["encoder"], f"{params / 1e6:.1f}M" if params else "-", embed.get("embed_clips_per_s"),
                     acc(pipes.get("probe") or pipes.get("zeroshot")),
                     acc(pipes.get("finetune_test")) if (pipes.get("finetune") or {}).get("returncode") == 0
                     else acc(pipes.get("finetune"))])
    return format_table(body, ["encoder", "encoder params", "embed clips/s", "probe (pretrained / random) or "
                               "zero-shot acc %", "fine-tune acc %"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated, from: %(default)s")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("AUDIO_SSL_DATA", "~/.cache/audio-ssl/"
                                                                              "data")).expanduser() / "esc50",
                        help="ESC-50 (default: $AUDIO_SSL_DATA/esc50)")
    parser.add_argument("--work", type=Path, default=Path("zoo-pipeline-check"),
                        help="folder for the weights, the cv results and the logs")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--max-clips", type=int, default=10, help="clips per fold of the probe and zero-shot runs")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of the fine-tune runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed embed calls (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (embed and the pipelines)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the written weights (not 0)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per pipeline run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for every pipeline run (and Lightning argument of the embed measurement)")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-pipelines", action="store_true")
    args = parser.parse_args(argv)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = [e for e in encoders if e not in ENCODERS]
    if unknown or not encoders:
        parser.error(f"--encoders: unknown {unknown}; choose from {', '.join(ENCODERS)}")
    if args.max_clips < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--max-clips, --steps and --repeats must be >= 1")
    if args.seed == 0:
        parser.error("--seed 0 is the recipes' seed_everything: the weights would equal the random-init control")
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    work = args.work.resolve()
    data_dir = args.data_dir.expanduser().resolve()
    rows = []
    for encoder in encoders:
        start = time.perf_counter()
        weights = write_weights(encoder, work, args.seed)
        row: dict[str, Any] = {"encoder": encoder, "weights": str(weights.path), "weights_made": weights.description,
                               "weights_params": weights.parameters, "notes": weights.notes,
                               "write_s": time.perf_counter() - start}
        if not args.skip_embed:
            row["embed"] = measure_embed(encoder, weights.path, args.repeats, sets=tuple(args.set))
            print(f"{encoder}: {row['embed']['encoder_params'] / 1e6:.2f}M encoder parameters, embed "
                  f"{row['embed']['embed_clips_per_s']:.2f} clips/s", flush=True)
        if not args.skip_pipelines:
            row["pipelines"] = check_pipelines(encoder, weights.path, data_dir, work, args.max_clips, args.steps,
                                               args.threads, tuple(args.set), args.timeout)
        rows.append(row)
    print(table(rows))
    payload = {"benchmark": "zoo_pipeline_check", "note": NOTE, "data_dir": str(data_dir), "work": str(work),
               "max_clips": args.max_clips, "steps": args.steps, "finetune_sets": list(FINETUNE_SETS),
               "seed": args.seed, "embed": {"device": "cpu", "dtype": "fp32", "batch": 8, "clip_seconds": 5.0,
                                            "sample_rate": 16000, "warmup": 1, "repeats": args.repeats},
               "environment": environment(), "results": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
