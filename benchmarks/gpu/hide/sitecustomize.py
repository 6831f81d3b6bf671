"""Make installed packages look absent, to rehearse a machine that lacks them (used by ``run_reproduce.sh --smoke``
and tests): put this folder on ``PYTHONPATH`` and set ``AUDIO_SSL_HIDE_PACKAGES=wandb,librosa``.

Hidden top-level packages fail to import (``ModuleNotFoundError``), ``importlib.util.find_spec`` reports them
missing and ``importlib.metadata`` has no distribution for them, so availability checks such as Lightning's and
torchmetrics' ``RequirementCache("librosa")`` say "not installed" exactly as on a machine without them.
"""

import importlib.abc
import importlib.metadata
import os
import sys

HIDDEN = frozenset(p.strip() for p in os.environ.get("AUDIO_SSL_HIDE_PACKAGES", "").split(",") if p.strip())


class _HideFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by AUDIO_SSL_HIDE_PACKAGES)", name=name)
        return None


if HIDDEN:
    sys.meta_path.insert(0, _HideFinder())
    _from_name = importlib.metadata.Distribution.from_name.__func__

    def _hidden_from_name(cls, name):
        if name.replace("_", "-").lower() in {h.replace("_", "-").lower() for h in HIDDEN}:
            raise importlib.metadata.PackageNotFoundError(name)
        return _from_name(cls, name)

    importlib.metadata.Distribution.from_name = classmethod(_hidden_from_name)

    import importlib.util

    _find_spec = importlib.util.find_spec

    def _hidden_find_spec(name, package=None):  # absent, not broken: None, as on a machine without them
        if name.partition(".")[0] in HIDDEN:
            return None
        return _find_spec(name, package)

    importlib.util.find_spec = _hidden_find_spec
