"""The registry of fold tasks ("pipelines"): ``pipeline: NAME`` in a config runs ``PIPELINES[NAME]`` once per
held-out fold. A config without a ``pipeline:`` key is a plain Lightning YAML and runs as ``"lightning"``.

Add a task with the decorator::

    @register_pipeline("my_pipeline")
    def my_task(context: FoldContext) -> dict[str, FoldOutput]: ...

(the interface is described in :mod:`audio_ssl.evaluation.fold`). The built-in tasks are imported on first
lookup (:data:`PIPELINE_MODULES`), so that their modules load only when a run needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from audio_ssl.evaluation.fold import FoldContext, FoldOutput

FoldTask = Callable[[FoldContext], dict[str, FoldOutput]]
"""A per-fold task: ``context -> {variant: FoldOutput}``."""

DEFAULT_PIPELINE = "lightning"
DEFAULT_VARIANT = "default"

PIPELINES: dict[str, FoldTask] = {}
"""Registered fold tasks by name (see :func:`get_pipeline`, which imports the modules that register them)."""

PIPELINE_MODULES: dict[str, str] = {
    "lightning": "audio_ssl.evaluation.pipelines",
    "pretrain_probe": "audio_ssl.evaluation.pipelines",
    "pretrain_finetune": "audio_ssl.evaluation.pipelines",
    "frozen_probe": "audio_ssl.evaluation.pipelines",
    "baseline": "audio_ssl.evaluation.baselines",
    "beats_probe": "audio_ssl.evaluation.beats_probe",
    "clap_zeroshot": "audio_ssl.evaluation.zeroshot",
}
"""Modules imported on first lookup so their ``@register_pipeline`` decorators run."""


def register_pipeline(name: str) -> Callable[[FoldTask], FoldTask]:
    """Decorator: ``@register_pipeline("my_pipeline")`` makes ``pipeline: my_pipeline`` configs run the task."""

    def decorator(task: FoldTask) -> FoldTask:
        if name in PIPELINES and PIPELINES[name] is not task:
            raise ValueError(f"a pipeline named {name!r} is already registered ({PIPELINES[name]!r})")
        PIPELINES[name] = task
        return task

    return decorator


def get_pipeline(name: str) -> FoldTask:
    """The registered task ``name``, importing the module that defines it on first use."""
    if name not in PIPELINES and name in PIPELINE_MODULES:
        importlib.import_module(PIPELINE_MODULES[name])
    if name not in PIPELINES:
        known = sorted(set(PIPELINES) | set(PIPELINE_MODULES))
        raise KeyError(f"unknown pipeline {name!r}: registered pipelines are {known}")
    return PIPELINES[name]
