"""Check that the audio stack (torch, torchaudio, libsndfile) imports and works, before anything else runs.

A mismatched torch / torchaudio pair (e.g. torch 2.11.0 beside torchaudio 2.11.1) fails only when
``libtorchaudio.so`` is loaded, deep inside the first test or command that touches it. ``make test``,
``make demo`` and the test suite's ``conftest.py`` call :func:`check_audio_stack` first, so such an
environment fails at once with one message that says what is wrong and how to fix it.

Run it directly with ``python -m audio_ssl.utils.environment`` (exit status 0 when usable, 1 otherwise).
"""

from __future__ import annotations

import importlib.metadata
import sys

FIX = (
    "Install the locked, matched versions: `make clean && make setup` "
    "(which runs `pip install --constraint requirements/lock.txt -e .[dev]`)."
)


class AudioStackError(RuntimeError):
    """The audio stack cannot be imported or does not work; the message names the part and the fix."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_audio_stack() -> dict[str, str]:
    """Import torch, torchaudio's compiled extension and soundfile (libsndfile), and run one op of each.

    Returns:
        ``{"torch": version, "torchaudio": version, "soundfile": version, "libsndfile": version}``.

    Raises:
        AudioStackError: naming the failing package, the installed versions and the fix.
    """
    versions = {name: _version(name) for name in ("torch", "torchaudio", "soundfile")}
    described = ", ".join(f"{k} {v}" for k, v in versions.items())
    steps = [
        ("torch", "import torch; torch.zeros(2).sum()"),
        # torchaudio's Python package imports even when its compiled library does not match torch; the
        # library is loaded by the first functional op, so run one.
        ("torchaudio", "import torch, torchaudio.functional as F; F.resample(torch.zeros(1, 32), 2, 1)"),
        ("soundfile", "import soundfile; soundfile.__libsndfile_version__"),
    ]
    for name, code in steps:
        try:
            exec(code, {})  # noqa: S102 - fixed strings above, no user input
        except Exception as err:  # any failure here is fatal for the whole project
            raise AudioStackError(
                f"The audio stack does not work: {name} failed with {type(err).__name__}: {err}\n"
                f"Installed: {described}.\n"
                f"torch and torchaudio must be one matched pair (see requirements/lock.txt). {FIX}"
            ) from err
    import soundfile

    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions


def main() -> int:
    try:
        versions = check_audio_stack()
    except AudioStackError as err:
        print(f"audio-ssl: {err}", file=sys.stderr)
        return 1
    print("audio stack OK: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
