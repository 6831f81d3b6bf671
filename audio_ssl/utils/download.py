"""Downloading files and archives: atomic writes, optional checksums, clear offline errors."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """Raised when a file cannot be fetched; the message says what to fetch by hand and where to put it."""


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file + rename) and return ``dest``.

    An existing ``dest`` whose checksum matches (or any existing ``dest`` when no checksum is
    given) is reused. A failed or interrupted download never leaves a partial ``dest`` behind.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or sha256sum(dest) == sha256.lower():
            return dest
        log.warning("%s exists but its SHA-256 does not match; downloading it again", dest)
    digest = hashlib.sha256()
    with atomic_write(dest) as out:  # the block raises: dest is left as it was, the temporary file removed
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - user-supplied URL
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(
                f"could not download {url} ({err}). If this machine is offline, fetch the file on a "
                f"machine with network access and place it at {dest}"
            ) from err
        with response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                      disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest.hexdigest()}")
    return dest


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a .zip or .tar(.gz) archive into ``dest_dir``, refusing members that escape it."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise DownloadError(f"archive {archive} has a member outside the target folder: {name}")
            zf.extractall(dest_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest_dir, filter="data")
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive")
    return dest_dir


def fetch_and_extract(url: str, dest_dir: str | os.PathLike, sha256: str | None = None) -> Path:
    """Download an archive next to ``dest_dir`` and unpack it into ``dest_dir``'s parent.

    The archive is removed afterwards; extraction happens in a temporary folder that is moved into
    place, so an interrupted run leaves no half-extracted ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    parent = dest_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    archive = download_file(url, parent / (dest_dir.name + ".download"), sha256=sha256)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=parent))
    try:
        extract_archive(archive, staging)
        entries = list(staging.iterdir())
        # Archives usually hold one top-level folder (e.g. ESC-50-master/); use its content.
        src = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        if dest_dir.exists():
            raise DownloadError(f"{dest_dir} appeared while downloading; remove it or point data_dir elsewhere")
        shutil.move(str(src), str(dest_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return dest_dir
