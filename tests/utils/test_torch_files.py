"""Files that are not PyTorch checkpoints get an error saying what they are, never a hint to turn weights_only off.
Every file is generated here (an HTML page as an expired download link returns it, text with a byte-order mark...)."""

from __future__ import annotations

import gzip

import pytest
import torch

from audio_ssl.models.beats import BEATsCheckpointError, load_beats_checkpoint
from audio_ssl.utils.provenance import read_checkpoint
from audio_ssl.utils.torch_files import CheckpointFileError, describe_non_checkpoint, load_weights_file

HTML = b"<!DOCTYPE html>\n<html><head><title>Request has expired</title></head><body>Expired</body></html>\n"
CASES = {
    "expired.pt": (HTML, "it looks like an HTML page, which is what an expired"),
    "bom_html.pt": (b"\xef\xbb\xbf  " + HTML, "an HTML page (starting with a UTF-8 byte-order mark)"),
    "bom.pt": (b"\xef\xbb\xbf{\"cfg\": {}}\n", "JSON text (starting with a UTF-8 byte-order mark)"),
    "notes.pt": (b"model weights go here\n", "it looks like text: 'model weights go here'"),
    "error.pt": (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "an XML/markup document"),
    "empty.pt": (b"", "an empty file (0 bytes)"),
    "packed.pt": (gzip.compress(b"x" * 100), "a gzip-compressed file"),
    "binary.pt": (bytes(range(200, 256)) * 3, "unknown binary data (first bytes c8 c9"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_not_a_checkpoint_says_what_it_is(tmp_path, name):
    content, looks_like = CASES[name]
    path = tmp_path / name
    path.write_bytes(content)
    for load, error in ((lambda p: load_beats_checkpoint(p), BEATsCheckpointError),
                        (read_checkpoint, ValueError), (load_weights_file, CheckpointFileError)):
        with pytest.raises(error) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "not a PyTorch" in message and looks_like in message, message
        assert "weights_only" not in message, message


def test_real_checkpoints_are_recognised(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "zip.pt")
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        assert describe_non_checkpoint(tmp_path / name) is None
        assert torch.equal(load_weights_file(tmp_path / name)["a"], torch.ones(2))


class _RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_that_would_run_code_is_refused_without_the_weights_only_hint(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, path)
    with pytest.raises(CheckpointFileError) as info:
        load_weights_file(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: ") and "GLOBAL print was not an allowed" in message, message
    assert "weights_only" not in message and "will likely succeed" not in message and "safe_globals" not in message


def test_damaged_zip_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"a": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointFileError, match=r"cut\.pt: damaged or truncated checkpoint file"):
        load_weights_file(path)
