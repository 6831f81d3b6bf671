"""``audio-ssl export``: a checkpoint as an ONNX classifier or as a HEAR 2021 module.

    audio-ssl export --format onnx runs/x/checkpoints/last.ckpt [--out model.onnx] [--opset 18]
    audio-ssl export --format hear runs/x/checkpoints/last.ckpt --out hear_modules/my_model

``onnx`` (classifiers only: methods with ``classifies``): waveform ``[batch, samples]`` float32 at the checkpoint's
sample rate in, class probabilities ``[batch, num_classes]`` out, front end included, class names and sample rate
in the model's ``metadata_props`` (see :mod:`audio_ssl.export.onnx` for when the length is dynamic). The file is
checked against PyTorch with onnxruntime before the command reports success. Default ``--out``: the checkpoint's
path with ``.onnx``; an existing folder as ``--out`` (or one ending in ``/``) gets the checkpoint's stem + ``.onnx``
inside it. A front end with no ONNX equivalent is refused at once (``--format hear`` exports any).

``hear`` (any method): a folder named ``--out`` (a Python identifier: it is the module name) holding
``__init__.py`` and ``model.ckpt``; put its parent on ``PYTHONPATH`` and pass the folder's name to the HEAR kit
(``python -m heareval.embeddings.runner my_model``). Without the folder,
``python -m heareval.embeddings.runner audio_ssl.export.hear --model CKPT`` works too (:mod:`audio_ssl.export.hear`).
"""

from __future__ import annotations

import argparse
import sys

from audio_ssl.export.onnx import DEFAULT_OPSET


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-ssl export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", help="audio-ssl checkpoint (.ckpt)")
    parser.add_argument("--format", choices=("onnx", "hear"), required=True, help="what to write")
    parser.add_argument("--out", default=None,
                        help="onnx: the .onnx file, or an existing folder (or a path ending in /) to hold "
                             "<checkpoint stem>.onnx (default: the checkpoint's path with .onnx); hear: the module "
                             "folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.format == "onnx":
            from audio_ssl.export.onnx import export_onnx

            result = export_onnx(args.checkpoint, args.out, args.opset)
            if result.note:
                print(f"audio-ssl export: note: {result.note}", file=sys.stderr)
            upper = f" and <= {result.max_samples}" if result.max_samples is not None else ""
            length = (f"any length >= {result.min_samples}{upper} samples" if result.dynamic_length
                      else f"exactly {result.input_samples} samples")
            print(f"wrote {result.path} (input: waveform [batch, samples], {length}; onnxruntime vs PyTorch max "
                  f"abs difference {result.max_abs_diff:.2g})")
        else:
            if args.out is None:
                raise ValueError("--format hear needs --out DIR (the module folder; its name is the module name)")
            from audio_ssl.export.hear import write_hear_module

            folder = write_hear_module(args.checkpoint, args.out)
            print(f"wrote {folder}/ (HEAR module '{folder.name}': put {folder.parent} on PYTHONPATH)")
    except (ValueError, OSError) as err:
        print(f"audio-ssl export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
