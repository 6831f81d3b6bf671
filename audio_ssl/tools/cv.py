"""``audio-ssl cv``: k-fold cross-validation of an experiment config over the dataset's official folds.

    audio-ssl cv --config experiments/supervised_cpu.yaml [--folds 1,2,3,4,5] [--name NAME] [--out results]
                 [--set trainer.max_epochs=3 ...] [--no-wandb] [extra Lightning CLI args, e.g. --trainer.max_epochs 3]
    audio-ssl cv --config experiments/supervised_resnet34.yaml --config my_overlay.yaml   # a recipe + an overlay
    audio-ssl cv --config experiments/simclr_probe.yaml --pipeline-set size=cpu [--pipeline-set transductive=true]
    audio-ssl cv --config experiments/zoo/clap_zeroshot.yaml --pipeline-set max_clips=20   # any pipeline's keys
    audio-ssl cv --config experiments/supervised_cpu.yaml --parallel 3 [--threads-per-fold 4]   # 3 folds at once
    audio-ssl cv --config experiments/supervised_resnet34.yaml --launcher submitit --slurm-partition gpu
                 --gpus-per-fold 1 --cpus-per-task 8 --timeout-min 120        # one SLURM job per fold
    audio-ssl cv --analyze-only NAME [--out results]

Writes ``<out>/<NAME>/`` (NAME defaults to the config's file name, ``_cpu`` added for a size overlay or
``--pipeline-set size=cpu``, ``_transductive`` for ``--pipeline-set transductive=true``): ``folds.csv``, ``summary.json``,
``predictions/``, ``analysis/`` and one ``fold{k}/`` folder per fold. Re-running the same command skips
folds that already finished.

``--parallel N`` runs N folds at once on this machine, each in its own process (threads: CPUs // N, or
``--threads-per-fold``; output in ``<run>/logs/fold{k}.log``; on one GPU the processes share it), with the same
per-fold results as one after another. ``--launcher submitit`` makes each fold a job (SLURM where available, else
local processes; ``pip install 'audio-ssl[cluster]'``); a fold with ``--gpus-per-fold``/``--nodes-per-fold`` > 1
runs Lightning's DDP inside its job (set ``trainer.devices``/``trainer.num_nodes`` to match), which ``--parallel`` > 1
refuses. Either way the runner waits for every fold, then writes the summary as a sequential run does; a failed
fold is reported with the end of its log and exit status 1 once the others have finished.

Pipeline configs (``pipeline: pretrain_probe`` ...) are described in :mod:`audio_ssl.evaluation.pipelines`. W&B runs are offline unless ``WANDB_MODE`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from audio_ssl.evaluation.run_config import parse_set_overrides
from audio_ssl.evaluation.runner import run_cv


def parse_folds(text: str) -> list[int]:
    try:
        folds = [int(f) for f in text.replace(" ", "").split(",") if f]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--folds {text!r}: expected comma-separated fold numbers, e.g. 1,2,3") from err
    if not folds:
        raise argparse.ArgumentTypeError("--folds is empty")
    return folds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-ssl cv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", action="append", default=[],
                        help="a Lightning YAML or a pipeline YAML; repeated: Lightning YAMLs stacked, later values "
                             "winning (a recipe, then its size overlay experiments/cpu/<recipe>.yaml)")
    parser.add_argument("--pipeline-set", action="append", default=[], metavar="KEY=VALUE", dest="pipeline_set",
                        help="set a key of a pipeline YAML (any pipeline's own keys), e.g. size=cpu, "
                             "transductive=true, max_clips=20, model=DIR (repeatable; the value is read as YAML; an "
                             "unknown key is refused; checked before anything is written)")
    parser.add_argument("--folds", type=parse_folds, default=None, help="e.g. 1,2,3 (default: every fold)")
    parser.add_argument("--name", default=None, help="run name (default: the config file's stem)")
    parser.add_argument("--out", default="results", help="results root (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Lightning CLI override for every fold's Lightning runs, e.g. trainer.max_epochs=3 "
                             "(repeatable); a pipeline's own keys are set with --pipeline-set (refused here; "
                             "clap_zeroshot, which has no Lightning stage, also takes them with --set, e.g. "
                             "--set data.init_args.data_dir=DIR; baseline and beats_probe take no --set)")
    parser.add_argument("--no-wandb", action="store_true", help="CSV logging only")
    parser.add_argument("--no-analysis", action="store_true", help="skip the error analysis at the end")
    parser.add_argument("--examples", type=int, default=8, help="clips per confidence gallery in the analysis")
    parallel = parser.add_argument_group("folds at once (default: one after another in this process)")
    parallel.add_argument("--parallel", type=int, default=1, metavar="N",
                          help="run N folds at once on this machine, each in its own process (default: %(default)s)")
    parallel.add_argument("--threads-per-fold", type=int, default=None, metavar="T",
                          help="torch/OpenMP threads of each fold's process (default: CPUs // N)")
    parallel.add_argument("--launcher", choices=["submitit"], default=None,
                          help="submitit: one job per fold through submitit (SLURM where available, else local)")
    parallel.add_argument("--launcher-cluster", choices=["auto", "slurm", "local"], default="auto",
                          help="submitit's executor (default: %(default)s: SLURM where srun exists, else local)")
    parallel.add_argument("--launcher-folder", default=None, metavar="DIR",
                          help="submitit's job files and logs (default: <out>/<NAME>/submitit/)")
    parallel.add_argument("--gpus-per-fold", type=int, default=0, metavar="G",
                          help="GPUs per fold job, one task each (Lightning DDP inside the fold; default: 0)")
    parallel.add_argument("--nodes-per-fold", type=int, default=1, metavar="M", help="nodes per fold job (default: 1)")
    parallel.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task (also its torch threads)")
    parallel.add_argument("--mem-gb", type=float, default=None, help="memory per node, GB")
    parallel.add_argument("--timeout-min", type=int, default=None, help="time limit per fold job, minutes")
    parallel.add_argument("--slurm-partition", default=None)
    parallel.add_argument("--slurm-account", default=None)
    parallel.add_argument("--slurm-qos", default=None)
    parser.add_argument("--analyze-only", metavar="NAME", default=None,
                        help="only (re)write <out>/NAME/analysis from the saved predictions")
    return parser


SUBMITIT_OPTIONS = ("launcher_cluster", "launcher_folder", "gpus_per_fold", "nodes_per_fold", "cpus_per_task", "mem_gb",
                    "timeout_min", "slurm_partition", "slurm_account", "slurm_qos")
"""The ``--launcher submitit`` options (refused without it rather than ignored)."""


def build_launcher(args: argparse.Namespace):
    """The fold launcher the arguments ask for: ``None`` (one fold after another in this process), a
    :class:`~audio_ssl.evaluation.launchers.ProcessLauncher` (``--parallel N`` > 1) or a
    :class:`~audio_ssl.evaluation.launchers.SubmititLauncher` (``--launcher submitit``)."""
    from audio_ssl.evaluation.launchers import ProcessLauncher, SubmititLauncher

    if args.launcher == "submitit":
        return SubmititLauncher(args.launcher_folder, args.launcher_cluster, gpus_per_fold=args.gpus_per_fold,
                                nodes_per_fold=args.nodes_per_fold, cpus_per_task=args.cpus_per_task,
                                timeout_min=args.timeout_min, mem_gb=args.mem_gb, partition=args.slurm_partition,
                                account=args.slurm_account, qos=args.slurm_qos)
    if args.parallel > 1:
        return ProcessLauncher(args.parallel, args.threads_per_fold)
    return None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.analyze_only:
        from audio_ssl.evaluation.analysis import analyze_run

        files = analyze_run(Path(args.out) / args.analyze_only, examples=args.examples)
        print(f"analysis written to {Path(args.out) / args.analyze_only / 'analysis'} ({len(files)} variant(s))")
        return
    if not args.config:
        parser.error("--config is required (or --analyze-only NAME)")
    stray = [a for a in extra if a.startswith("--") and "." not in a and a not in ("--seed_everything", "--ckpt_path")]
    if stray:
        parser.error(f"unrecognised argument(s) {stray}: Lightning overrides look like --trainer.max_epochs 3")
    overrides = parse_set_overrides(args.set) + extra
    from audio_ssl.data.audio import AudioDecodeError
    from audio_ssl.evaluation.runner import FoldsFailed
    from audio_ssl.models.beats import BEATsCheckpointError

    if args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: the number of folds at once must be at least 1")
    if args.threads_per_fold is not None and args.threads_per_fold < 1:
        parser.error(f"--threads-per-fold {args.threads_per_fold}: must be at least 1")
    if args.launcher and args.parallel != 1:
        parser.error("--parallel N and --launcher submitit: choose one (submitit jobs already run at once)")
    stray = [f"--{dest.replace('_', '-')}" for dest in SUBMITIT_OPTIONS
             if getattr(args, dest) != parser.get_default(dest)]
    if stray and not args.launcher:
        parser.error(f"{', '.join(stray)}: options of --launcher submitit, which is not given")
    try:
        launcher = build_launcher(args)
    except (ImportError, ValueError) as err:
        parser.error(str(err))
    try:
        summary = run_cv(args.config[0], folds=args.folds, name=args.name, out=args.out, overrides=overrides,
                         wandb=not args.no_wandb, analyze=not args.no_analysis, examples=args.examples,
                         overlays=args.config[1:], pipeline_set=args.pipeline_set, launcher=launcher,
                         threads_per_fold=args.threads_per_fold)
    except FoldsFailed as err:
        print(f"audio-ssl cv: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, AudioDecodeError, BEATsCheckpointError, OSError) as err:
        # OSError: a missing file, or a pretrained model that cannot be loaded (ClapLoadError,
        # HFModelNotFoundError); a full disk or a write refused is reported the same way, in one line.
        if os.environ.get("AUDIO_SSL_TRACEBACK"):
            raise
        from audio_ssl.cli import short_error

        print(f"audio-ssl cv: error: {short_error(str(err))}\n(set AUDIO_SSL_TRACEBACK=1 for the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None
    from audio_ssl.evaluation.summary import results_table
    from audio_ssl.utils.distributed import is_rank_zero

    if not is_rank_zero():  # DDP: the other ranks ran the same folds; rank 0 reports
        return

    print()
    print(results_table([summary]))
    messages = dict.fromkeys(v["bookkeeping"]["message"] for v in summary["variants"].values())
    print(f"fold bookkeeping: {'; '.join(messages)}")
    print(f"results in {Path(args.out) / summary['name']}")
