"""Parameters and embedding throughput of the model-zoo recipes at their real size (random weights).

For each Lightning YAML (default: every ``experiments/zoo/*_finetune.yaml``) the model is instantiated through the
Lightning config (``audio_ssl.cli.build_cli``, as ``audio-ssl fit`` does) with the encoder's ``pretrained`` set to
false: the real architecture with random weights, so no weights are downloaded. ``embed`` is timed on 5 s clips
at 16 kHz (a batch of ``--batch`` clips, ``--warmup`` untimed calls, the median of ``--repeats`` timed calls) under
``torch.inference_mode``, once as a whole (the method's front end, e.g. the Hugging Face feature extractor, which
runs on the CPU, plus the encoder) and once for the encoder alone on the front end's precomputed output.

    python benchmarks/zoo_embed.py --out results/zoo_embed_cpu.json                       # CPU, batch 8, float32
    python benchmarks/zoo_embed.py --device cuda --dtype bf16 --batch 64 --out results/zoo_embed_cuda.json

The Hugging Face encoders read their config (``config.json``, ``preprocessor_config.json``) from the hub id even
with random weights: from the Hugging Face cache, or the network. ``--architecture defaults`` builds them instead
from ``transformers``' default config of the model family named in the hub id (AST, wav2vec 2.0, HuBERT, WavLM:
the base architectures) and its default feature extractor, written to a temporary folder; the JSON records which.
``--set KEY=VALUE`` (repeatable) adds a Lightning CLI argument ``--KEY VALUE`` to every config, e.g.
``--set model.init_args.encoder.init_args.model=DIR`` (a local model folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    environment,
    format_table,
    load_experiment,
    median,
    quiet_lightning,
    time_repeats,
    write_json,
)

PRETRAINED_ARG = "--model.init_args.encoder.init_args.pretrained"
MODEL_ARG = "--model.init_args.encoder.init_args.model"
ENCODER_ARG = "--model.init_args.encoder"
#: transformers' config and feature-extractor classes of each family, found by name in a hub id (--architecture
#: defaults); their default arguments are the base architectures of these model types.
DEFAULT_ARCHITECTURES = {
    "ast": ("ASTConfig", "ASTFeatureExtractor"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2FeatureExtractor"),
    "hubert": ("HubertConfig", "Wav2Vec2FeatureExtractor"),
    "wavlm": ("WavLMConfig", "Wav2Vec2FeatureExtractor"),
}


def default_recipes() -> list[Path]:
    return sorted((REPO_ROOT / "experiments" / "zoo").glob("*_finetune.yaml"))


def _encoder_block(config: Path) -> dict:
    import yaml

    encoder = ((yaml.safe_load(config.read_text()) or {}).get("model", {}).get("init_args") or {}).get("encoder")
    return encoder if isinstance(encoder, dict) else {}


def hub_id(config: Path) -> str | None:
    """The Hugging Face model a recipe names (None when its encoder is not an HFAudioEncoder)."""
    encoder = _encoder_block(config)
    if str(encoder.get("class_path", "")).endswith("HFAudioEncoder"):
        return str(encoder["init_args"]["model"])
    return None


def random_init_args(config: Path) -> list[str]:
    """The Lightning CLI arguments that build a recipe's encoder untrained: ``pretrained`` false when the recipe
    states a bool (HFAudioEncoder), null when it names weights (a path or hub id: TimmCNN), given as one JSON value
    of the encoder (jsonargparse turns a nested ``--...pretrained null`` into the string 'None'); ValueError
    without one."""
    stated = (_encoder_block(config).get("init_args") or {}).get("pretrained", None)
    if "pretrained" not in (_encoder_block(config).get("init_args") or {}):
        raise ValueError(f"{config}: model.init_args.encoder.init_args.pretrained is not stated, so the benchmark "
                         "cannot build the encoder with random weights")
    if isinstance(stated, bool):
        return [PRETRAINED_ARG, "false"]
    return [ENCODER_ARG, '{"init_args": {"pretrained": null}}']


def write_default_architecture(model_id: str, folder: Path) -> str:
    """Save transformers' default config and feature extractor of ``model_id``'s family into ``folder``; returns
    the config class used. ValueError when the hub id names none of the families."""
    import transformers

    matches = [family for family in DEFAULT_ARCHITECTURES if family in model_id.lower()]
    if len(matches) != 1:
        raise ValueError(f"--architecture defaults: cannot tell the model family of {model_id!r} (one of "
                         f"{sorted(DEFAULT_ARCHITECTURES)} must appear in the hub id)")
    config_cls, extractor_cls = DEFAULT_ARCHITECTURES[matches[0]]
    getattr(transformers, config_cls)().save_pretrained(folder)
    getattr(transformers, extractor_cls)().save_pretrained(folder)
    return config_cls


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench_config(config: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Instantiate one recipe with random weights and time its ``embed``; returns one JSON row."""
    overrides = [*random_init_args(config), "--trainer.accelerator", "cpu", *args.override]
    architecture = "the model's config.json" if hub_id(config) else "recipe"
    if args.architecture == "defaults" and hub_id(config) is not None:
        folder = workdir / config.stem
        architecture = f"transformers {write_default_architecture(hub_id(config), folder)}() defaults"
        overrides += [MODEL_ARG, str(folder)]
    torch.manual_seed(0)
    model, datamodule, _ = load_experiment(config, overrides)
    device = torch.device(args.device)
    model = model.to(device).eval()
    sample_rate = int(model.sample_rate)
    gen = torch.Generator().manual_seed(0)
    audio = (0.1 * torch.randn(args.batch, int(args.seconds * sample_rate), generator=gen)).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    with torch.inference_mode(), autocast:
        inputs = model.frontend(audio)
        whole = time_repeats(lambda: model.embed(audio), args.repeats, args.warmup, device)
        encode = getattr(model, "encode", model.encoder)  # FineTuneClassifier.encode; else embed = encoder(front end)
        encoder = time_repeats(lambda: encode(inputs), args.repeats, args.warmup, device)
        dim = model.embed(audio[:1]).shape[-1]
    embed_s, encoder_s = median(whole.wall), median(encoder.wall)
    return {
        "config": str(config.relative_to(REPO_ROOT) if config.is_relative_to(REPO_ROOT) else config),
        "hub_id": hub_id(config),
        "architecture": architecture,
        "weights": "random (pretrained=false)",
        "encoder": type(model.encoder).__name__,
        "encoder_params": count_parameters(model.encoder),
        "model_params": count_parameters(model),
        "embedding_dim": int(dim),
        "input_shape": list(inputs.shape),
        "batch": args.batch,
        "clip_seconds": args.seconds,
        "sample_rate": sample_rate,
        "embed_median_s": embed_s,
        "embed_clips_per_s": args.batch / embed_s,
        "encoder_median_s": encoder_s,
        "encoder_clips_per_s": args.batch / encoder_s,
        "embed_wall_s": whole.wall,
        "encoder_wall_s": encoder.wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, help="Lightning YAMLs (default: experiments/zoo/*_finetune)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length in seconds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--architecture", choices=("hub", "defaults"), default="hub",
                        help="HF encoders: the hub id's config (cache or network), or transformers' defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra Lightning CLI argument --KEY VALUE for every config (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.seconds <= 0:
        parser.error("--batch and --repeats must be >= 1, --warmup >= 0 and --seconds > 0")
    if any("=" not in item for item in args.set):
        parser.error(f"--set takes KEY=VALUE, got {[item for item in args.set if '=' not in item]}")
    args.override = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    configs = args.configs or default_recipes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo-embed-") as workdir:
        for config in configs:
            rows.append(bench_config(config.resolve(), args, Path(workdir)))
            row = rows[-1]
            print(f"{row['config']}: {row['encoder_params'] / 1e6:.2f}M encoder parameters, "
                  f"embed {row['embed_clips_per_s']:.1f} clips/s, encoder alone {row['encoder_clips_per_s']:.1f}")
    print(format_table([[r["config"], f"{r['encoder_params'] / 1e6:.2f}M", f"{r['embed_clips_per_s']:.1f}",
                         f"{r['encoder_clips_per_s']:.1f}"] for r in rows],
                       ["config", "encoder params", "embed clips/s", "encoder clips/s"]))
    payload = {"benchmark": "zoo_embed", "device": args.device, "dtype": args.dtype, "environment": environment(),
               "results": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
