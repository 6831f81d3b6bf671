"""The download path, exercised against a local HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import zipfile

import pytest

from audio_ssl.data import ESC50DataModule
from audio_ssl.utils.download import DownloadError, download_file


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_like_official(src, archive):
    """Zip ``src`` under a single top-level folder, as GitHub's ESC-50-master.zip is laid out."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, "ESC-50-master/" + str(path.relative_to(src)))


def test_datamodule_downloads_and_extracts_the_archive(esc50_root, http_root, tmp_path, monkeypatch):
    served, base = http_root
    zip_like_official(esc50_root, served / "master.zip")
    monkeypatch.setattr(ESC50DataModule, "download_url", f"{base}/master.zip")
    target = tmp_path / "datasets" / "ESC-50"
    dm = ESC50DataModule(str(target), download=True, cache_dir=str(tmp_path / "cache"), num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert (target / "meta" / "esc50.csv").exists()
    assert len(list((target / "audio").iterdir())) == 50
    assert len(dm.train_set) + len(dm.val_set) == 50  # fit: train + val (the test fold here)
    assert not list(target.parent.glob("*.download")) and not list(target.parent.glob(".*"))


def test_download_file_is_atomic_and_checks_the_checksum(http_root, tmp_path):
    served, base = http_root
    payload = b"checkpoint bytes" * 1000
    (served / "file.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = download_file(f"{base}/file.bin", tmp_path / "a" / "file.bin", sha256=good, progress=False)
    assert dest.read_bytes() == payload
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(f"{base}/file.bin", tmp_path / "b" / "file.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "b" / "file.bin").exists()
    assert list((tmp_path / "b").iterdir()) == []  # no partial file left behind


def test_offline_error_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/master.zip"
    monkeypatch.setattr(ESC50DataModule, "download_url", url)
    dm = ESC50DataModule(str(tmp_path / "ESC-50"), download=True)
    with pytest.raises(DownloadError, match=rf"could not download {url}.*place it at .*ESC-50\.download"):
        dm.prepare_data()
    assert not (tmp_path / "ESC-50").exists()


def test_datamodule_without_download_flag_never_fetches(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr("audio_ssl.data.base.fetch_and_extract", boom)
    with pytest.raises(FileNotFoundError, match="--data.init_args.download true"):
        ESC50DataModule(str(tmp_path / "x")).prepare_data()
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
