"""The frozen-BEATs linear probe: the ``frozen_probe`` pipeline (:func:`audio_ssl.evaluation.pipelines.probe_frozen`)
on a :class:`~audio_ssl.methods.beats.BEATsClassifier` built from an official-format checkpoint.

The frozen encoder is the expensive part (~90M parameters), so each fold's clips go through it exactly once:
the pooled features (``BEATsClassifier.embed``, optionally several ``layers`` concatenated) are cached per fold by
:mod:`audio_ssl.evaluation.embeddings` (keyed by the weights' hash, the layers, the clip list, the clip length
and the sample rate) in ``feature_cache_dir`` (default ``$AUDIO_SSL_FEATURES`` or ``~/.cache/audio-ssl/features``),
and every held-out fold of a cross-validation, and every later run with the same checkpoint, reads them back.
Next to the pretrained encoder (variant ``pretrained``) the same architecture with BEATs' own random
initialisation (seed 1234) is probed as the control (variant ``random_init``). The classifier is
:class:`~audio_ssl.evaluation.probe.LinearProbe`, ``C`` chosen by leave-one-training-fold-out when a list is given.

Ways in: :func:`run_beats_probe` (Python; one ``{variant: FoldOutput}`` per held-out fold); ``pipeline: beats_probe``
configs for ``audio-ssl cv`` (:func:`beats_probe_task`, kept as the name of this instance of ``frozen_probe``)::

      pipeline: beats_probe
      checkpoint: /path/to/BEATs_iter3_plus_AS2M.pt   # required (path or URL)
      layers: null                 # or e.g. [8, 12]: hidden states to pool and concatenate
      probe: linear_probe.yaml     # probe settings (C, solver, device, embed_batch_size, ...), or a mapping
      feature_cache_dir: null      # default: ~/.cache/audio-ssl/features ($AUDIO_SSL_FEATURES)
      clips_per_class: null        # or N: the first N clips of each class per fold (a pipeline check)
      data: {class_path: audio_ssl.data.ESC50DataModule, init_args: {}}  # data_dir: $AUDIO_SSL_DATA/esc50 by default

and the command line ``python -m audio_ssl.tools.beats_probe`` (:mod:`audio_ssl.tools.beats_probe`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.evaluation.embeddings import default_feature_dir
from audio_ssl.evaluation.fold import FoldContext, FoldOutput
from audio_ssl.evaluation.pipelines import probe_frozen
from audio_ssl.evaluation.probe import ProbeConfig, load_probe_config
from audio_ssl.evaluation.registry import register_pipeline

log = logging.getLogger(__name__)

__all__ = ["BEATS_PROBE_KEYS", "beats_probe_task", "build_datamodule", "default_feature_dir", "random_init_copy",
           "run_beats_probe"]

BEATS_PROBE_KEYS = {"pipeline", "checkpoint", "checkpoint_sha256", "layers", "probe", "feature_cache_dir", "bf16",
                    "clips_per_class", "data"}
RANDOM_SEED = 1234  # not 0: make-beats-checkpoint writes its random test checkpoints with seed 0


def random_init_copy(model, seed: int = RANDOM_SEED):
    """A copy of a ``BEATsClassifier`` whose encoder holds BEATs' own initialisation of the same config
    (``torch.manual_seed(seed)``; the global random state is left as it was): the untrained control."""
    from audio_ssl.models.beats import BEATs

    control = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = BEATs(model.encoder.cfg)
    control.encoder.load_state_dict(fresh.state_dict())
    return control


def run_beats_probe(
    checkpoint: str,
    datamodule: FoldAudioDataModule,
    test_folds: Sequence[int] | None = None,
    layers: list[int] | None = None,
    probe: ProbeConfig | None = None,
    feature_cache_dir: str | os.PathLike | None = None,
    bf16: bool = False,
    clips_per_class: int | None = None,
    checkpoint_sha256: str | None = None,
    random_init: bool = True,
) -> dict[int, dict[str, FoldOutput]]:
    """Linear probe of frozen BEATs on each of ``test_folds`` (default: every fold), features cached per fold.

    For held-out fold ``k`` the probe trains on the data module's ``train`` split for test fold ``k``
    (:meth:`~audio_ssl.data.base.FoldAudioDataModule.split_folds`: every fold but ``k`` and ``val_fold``).
    ``probe`` holds the classifier and extraction settings (default :class:`ProbeConfig`; its ``device``,
    ``embed_batch_size`` and ``num_workers`` drive the extraction, under bfloat16 autocast with ``bf16``).
    ``clips_per_class`` keeps only the first clips of each class in every fold (a quick pipeline check; recorded
    in the description's ``details``). ``checkpoint_sha256`` verifies the file. Returns
    ``{fold: {"pretrained": FoldOutput, "random_init": FoldOutput}}`` (no ``random_init`` with ``random_init=False``).
    """
    from audio_ssl.methods.beats import BEATsClassifier

    start = time.perf_counter()
    probe = probe or ProbeConfig()
    datamodule.prepare_data()
    folds = list(test_folds) if test_folds is not None else list(range(1, datamodule.num_folds + 1))
    for fold in folds:
        datamodule.split_folds("train", test_fold=fold)  # checks each fold before anything is embedded
    with torch.random.fork_rng(devices=[]):  # the (unused) head is seeded, so the weights' hash is reproducible
        torch.manual_seed(RANDOM_SEED)
        model = BEATsClassifier(checkpoint, num_classes=datamodule.num_classes, freeze_encoder=True, layers=layers,
                                checkpoint_sha256=checkpoint_sha256, sample_rate=datamodule.sample_rate)
    models = {"pretrained": model}
    if random_init:
        models["random_init"] = random_init_copy(model)
    details = {"checkpoint": str(checkpoint), "layers": model.layers, "embedding_dim": model.embedding_dim,
               "random_init_seed": RANDOM_SEED, "probe_settings": asdict(probe)}
    outputs = probe_frozen(models, datamodule, folds, probe,
                           Path(feature_cache_dir) if feature_cache_dir is not None else default_feature_dir(),
                           method="BEATsClassifier (frozen) + linear probe",
                           pretraining_data=f"the BEATs checkpoint {checkpoint}", clips_per_class=clips_per_class,
                           bf16=bf16, details=details)
    log.info("BEATs probe on folds %s in %.1f s", folds, time.perf_counter() - start)
    return outputs


def build_datamodule(data_config: dict, test_fold: int) -> FoldAudioDataModule:
    """The data module of a config's ``data`` block (``class_path`` + ``init_args``) with ``test_fold`` set."""
    from audio_ssl.evaluation.baselines import build_datamodule as build

    return build(data_config, test_fold)


def missing_checkpoint(flag: str) -> str:
    """The missing-checkpoint message, naming ``flag`` as the place to give it."""
    from audio_ssl.methods.beats import MISSING_CHECKPOINT

    return MISSING_CHECKPOINT.replace("--model.init_args.checkpoint", flag)


@register_pipeline("beats_probe")
def beats_probe_task(context: FoldContext) -> dict[str, FoldOutput]:
    """Cross-validation task: the frozen probe of BEATs (and of its random-init control) on ``context.fold``."""
    config, fold = context.config, context.fold
    unknown = sorted(set(config) - BEATS_PROBE_KEYS)
    if unknown:
        raise ValueError(f"{context.source}: unknown key(s) {unknown} for pipeline beats_probe; "
                         f"allowed: {sorted(BEATS_PROBE_KEYS)}")
    if not config.get("checkpoint"):
        raise ValueError(f"{context.source}: " + missing_checkpoint("'checkpoint:'"))
    if "data" not in config:
        raise ValueError(f"{context.source}: a beats_probe config needs a 'data' block (class_path + init_args)")
    probe = load_probe_config(config.get("probe"), context.config_dir)
    outputs = run_beats_probe(
        str(config["checkpoint"]), build_datamodule(config["data"], fold), [fold], layers=config.get("layers"),
        probe=probe, feature_cache_dir=config.get("feature_cache_dir"), bf16=bool(config.get("bf16", False)),
        clips_per_class=config.get("clips_per_class"), checkpoint_sha256=config.get("checkpoint_sha256"),
    )
    return outputs[fold]
