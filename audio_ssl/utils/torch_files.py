"""Reading checkpoint files with ``torch.load(weights_only=True)`` and errors that point to the right fix.

A file that is not a PyTorch checkpoint at all (an HTML page an expired download link returned, a JSON or text
file, a file starting with a UTF-8 byte-order mark, an archive, an empty file) makes ``torch.load`` say that the
file needs ``weights_only=False``, which is wrong twice: that would not load it either, and it would run code
from an untrusted file. :func:`load_weights_file` looks at the first bytes instead and says what the file is;
for a real pickle that would need code to unpickle it names what it refused, never suggesting to turn the
safety off.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

__all__ = ["CheckpointFileError", "describe_non_checkpoint", "load_weights_file"]

_HEAD_BYTES = 4096


class CheckpointFileError(ValueError):
    """A file that cannot be read as a PyTorch checkpoint; the message names it and what it looks like."""


def describe_non_checkpoint(path: str | os.PathLike) -> str | None:
    """``None`` when ``path`` starts like a file ``torch.save`` writes (a zip archive, or a legacy pickle);
    otherwise what it looks like, e.g. ``"an HTML page, which is what an expired or login-protected
    download link returns"`` or ``"text (starting with a UTF-8 byte-order mark)"``.

    Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return None
    if not head:
        return "an empty file (0 bytes)"
    bom = head.startswith(b"\xef\xbb\xbf")
    note = " (starting with a UTF-8 byte-order mark)" if bom else ""
    text = head[3:] if bom else head
    stripped = text.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")) or b"<html" in stripped[:1024]:
        return f"an HTML page{note}, which is what an expired or login-protected download link returns"
    if stripped.startswith(b"<?xml") or stripped.startswith(b"<"):
        return f"an XML/markup document{note} (e.g. a storage service's error response)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (unpack it first)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (unpack it first)"
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and all(c.isprintable() or c in "\r\n\t" for c in decoded[:512]):
        kind = "JSON text" if stripped.startswith((b"{", b"[")) else "text"
        return f"{kind}{note}: {decoded.strip()[:60]!r}"
    if bom:
        return "a file starting with a UTF-8 byte-order mark (text, not a checkpoint)"
    return f"unknown binary data (first bytes {head[:8].hex(' ')})"


def _refused_reason(err: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, without its advice to turn ``weights_only`` off."""
    message = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", message, re.S)
    reason = (match.group(1) if match else message.splitlines()[-1] if message else type(err).__name__).strip()
    reason = re.split(r"\s+Please use|\s+You can use", reason)[0]  # torch's advice to allowlist it: not ours
    return " ".join(reason.split())[:300]


def load_weights_file(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with errors that name ``path`` and the fix.

    Raises:
        CheckpointFileError: the file does not exist; it is not a PyTorch checkpoint (message: ``"<path>: not a
            PyTorch <what>: it looks like an HTML page ..."``); it is one but unpickling it would run code
            (message names the refused object; it never suggests ``weights_only=False``); or it is damaged.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: {what} file does not exist")
    try:
        looks_like = describe_non_checkpoint(path)
    except OSError as err:
        raise CheckpointFileError(f"{path}: cannot read the {what} file ({err})") from err
    if looks_like is not None:
        raise CheckpointFileError(f"{path}: not a PyTorch {what}: it looks like {looks_like}. Fetch the file "
                                  "again, or point at the real .pt/.ckpt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"refusing to load {path}: it is not a plain weights file, and unpickling it would need to run code "
            f"from the file ({_refused_reason(err)}). Export its weights to a plain state dict from a trusted "
            "copy of the code that wrote it"
        ) from err
    except Exception as err:  # noqa: BLE001 - zip, EOF, storage errors: all mean a damaged file
        raise CheckpointFileError(f"{path}: damaged or truncated {what} file ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from err
