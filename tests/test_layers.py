"""The package's layers: every import (at the top of a file or inside a function) runs from a higher layer to a
lower one or within one folder, so there is no import circle between folders and nothing below imports from above
(e.g. methods/ never imports from evaluation/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import audio_ssl

PACKAGE = Path(audio_ssl.__file__).parent
LAYERS = [  # lowest first; a folder may import from its own layer's other folders only when listed below
    {"utils"},
    {"tokenizers"},
    {"data", "features", "losses"},
    {"models"},
    {"methods"},
    {"cli"},
    {"evaluation"},
    {"export"},  # HEAR API and ONNX export of checkpoints (HEAR's long-audio windows come from evaluation/windows)
    {"tools"},
    {"serve"},  # the HTTP server stands on classify (tools/classify.py)
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def room(module: str) -> str | None:
    """``audio_ssl.methods.base`` -> ``methods``; ``audio_ssl.cli`` -> ``cli``; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "audio_ssl" and len(parts) > 1 else None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_layers(path):
    here = room("audio_ssl." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    if here is None or here not in LAYER:  # audio_ssl/__init__.py
        return
    upward = sorted(m for m in imports(path) if (there := room(m)) in LAYER and there != here
                    and LAYER[there] >= LAYER[here])
    assert not upward, f"{path.relative_to(PACKAGE)} ({here}, layer {LAYER[here]}) imports from the same or a higher layer: {upward}"


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | {"cli"}
    assert folders == set(LAYER)
