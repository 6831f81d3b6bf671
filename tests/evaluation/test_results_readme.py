"""The README's results tables are generated from result files between markers, never typed."""

from __future__ import annotations

import pytest

from audio_ssl.tools.results import replace_section


def test_replace_section_rewrites_only_between_its_markers():
    text = "intro\n<!-- results:gpu -->\nold\n<!-- /results:gpu -->\n<!-- results:cpu -->\nkeep\n<!-- /results:cpu -->\n"
    out = replace_section(text, "gpu", "| new |\n")
    assert out == "intro\n<!-- results:gpu -->\n| new |\n<!-- /results:gpu -->\n<!-- results:cpu -->\nkeep\n<!-- /results:cpu -->\n"
    assert replace_section(out, "gpu", "| new |") == out  # idempotent


@pytest.mark.parametrize("text", ["no markers", "<!-- /results:gpu -->\n<!-- results:gpu -->\n",
                                  "<!-- results:gpu -->\n<!-- /results:gpu -->\n<!-- results:gpu -->\n"])
def test_missing_or_misordered_markers_name_the_file(text):
    with pytest.raises(ValueError, match="README.md: needs exactly one '<!-- results:gpu -->'"):
        replace_section(text, "gpu", "t", "README.md")
