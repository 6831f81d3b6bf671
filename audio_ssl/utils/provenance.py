"""Where a result came from: the package version, the git commit, and the self-description stored in every
checkpoint (see :meth:`audio_ssl.methods.base.BaseMethod.checkpoint_metadata`)."""

from __future__ import annotations

import functools
import inspect
import subprocess
from importlib import metadata
from pathlib import Path

CHECKPOINT_KEY = "audio_ssl"
"""The checkpoint entry that holds the self-description (a dict of plain values: loads with weights_only)."""

METADATA_FORMAT = 1
REPO_ROOT = Path(__file__).resolve().parents[2]


def package_version() -> str:
    try:
        return metadata.version("audio-ssl")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@functools.lru_cache(maxsize=4)
def git_state(repo: str | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the source tree (None outside a git checkout)."""
    cwd = Path(repo) if repo else REPO_ROOT
    if not (cwd / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def version_string() -> str:
    """``audio-ssl 0.1.0 (git abc123def456, modified)``; the git part only in a git checkout."""
    text = f"audio-ssl {package_version()}"
    state = git_state()
    if state["commit"]:
        text += f" (git {state['commit'][:12]}{', modified' if state['dirty'] else ''})"
    return text


def to_plain(value):
    """``value`` as nested dicts/lists of str, int, float, bool and None (what ``torch.load(weights_only=True)``
    and YAML/JSON accept); Paths and other objects become strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        return to_plain(value.as_dict())
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    return str(value)


def describe_module(module) -> dict:
    """``{"class_path", "init_args"}`` of a module: each constructor argument that the module keeps as an
    attribute of the same name and that is a plain value (how a front end's settings are recorded)."""
    cls = type(module)
    args = {}
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        parameters = {}
    for name in parameters:
        if name != "self" and hasattr(module, name):
            value = getattr(module, name)
            if value is None or isinstance(value, (bool, int, float, str, list, tuple)):
                args[name] = to_plain(value)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}


def describe_architecture(encoder) -> dict:
    """``{"class_path", "init_args"}`` of an encoder's structure: ``init_args`` = its ``architecture()`` (the
    structural hyper-parameters, e.g. AudioResNet's widths and stem_pool, the ViT's dims and patch size) as plain
    values, or None when the encoder does not state them (only its class can then be compared)."""
    cls = type(encoder)
    architecture = getattr(encoder, "architecture", None)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": to_plain(architecture()) if callable(architecture) else None}


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint loaded with ``weights_only=True`` (on the CPU); one-line ``ValueError`` when it cannot be."""
    from audio_ssl.utils.torch_files import load_weights_file

    path = Path(path)
    checkpoint = load_weights_file(path, map_location="cpu")  # CheckpointFileError is a ValueError
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, expected a dict)")
    return checkpoint


def checkpoint_metadata(checkpoint: dict) -> dict:
    """The self-description of a loaded checkpoint (``{}`` for checkpoints saved without one)."""
    meta = checkpoint.get(CHECKPOINT_KEY)
    return meta if isinstance(meta, dict) else {}


__all__ = ["CHECKPOINT_KEY", "checkpoint_metadata", "describe_architecture", "describe_module", "git_state", "package_version",
           "read_checkpoint", "to_plain", "version_string"]
