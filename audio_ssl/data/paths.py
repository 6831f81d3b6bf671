"""Where datasets live when a recipe does not name a folder.

``data_dir`` left out (or ``null``) in a recipe means ``$AUDIO_SSL_DATA/<dataset>``, e.g.
``$AUDIO_SSL_DATA/esc50`` for ESC-50 and ``$AUDIO_SSL_DATA/urbansound8k`` for UrbanSound8K. Without the
variable the root is ``~/.cache/audio-ssl/data``. Point elsewhere with ``--data.init_args.data_dir DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "AUDIO_SSL_DATA"
DEFAULT_DATA_ROOT = "~/.cache/audio-ssl/data"


def data_root() -> Path:
    """``$AUDIO_SSL_DATA`` if set (and not empty), else ``~/.cache/audio-ssl/data``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT).expanduser()


def default_data_dir(dataset_name: str) -> Path:
    return data_root() / dataset_name


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder without its metadata file; the message says how to point at the data or fetch it."""


__all__ = ["DATA_ENV", "DEFAULT_DATA_ROOT", "DatasetNotFoundError", "data_root", "default_data_dir"]
