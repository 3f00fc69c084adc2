"""README examples that tests produce, so they cannot drift from what the tool prints.

A block in README.md between `<!-- output: NAME ... -->` and `<!-- /output -->` is a fenced console
block: the commands (`$ ...`) and what they printed. The test that runs the same commands compares it
with their output (paths normalised); `PRONLM_UPDATE_README=1 pytest ...` rewrites it instead.
"""

from __future__ import annotations

import os
import re

from tests.conftest import REPO

README = REPO / "README.md"
UPDATE = "PRONLM_UPDATE_README"
# CPU kernels that give the same numbers on every x86 CPU: ATen's unvectorised ones, MKL's conditional
# numerical reproducibility, oneDNN at SSE4.1. The demo trains 300 steps, which turns the rounding of
# AVX-512 against AVX2 kernels into another model (on one machine: final loss 0.280 against 0.282,
# 44/48 against 42/48 clips transcribed), so the README's demo and assess examples are produced, and
# checked, under these. They cost about 1.8 times the time.
PORTABLE_NUMERICS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def _span(text: str, name: str) -> tuple[int, int]:
    """Start and end of the fenced block under NAME's marker (the fence lines included)."""
    marker = re.search(rf"<!-- output: {re.escape(name)}\b.*?-->\n", text)
    assert marker, f"README.md has no <!-- output: {name} --> block"
    end = text.index("<!-- /output -->", marker.end())
    return marker.end(), end


def readme_block(name: str) -> str:
    """The console text of NAME's block (between its ``` fences)."""
    text = README.read_text()
    start, end = _span(text, name)
    lines = text[start:end].splitlines()
    assert lines[0].startswith("```") and lines[-1] == "```", f"README block {name} is not one fenced block"
    return "\n".join(lines[1:-1])


def check_readme_block(name: str, shown: str) -> None:
    """NAME's README block must be `shown` (commands and output); PRONLM_UPDATE_README=1 writes it."""
    shown = shown.rstrip("\n")
    if os.environ.get(UPDATE):
        text = README.read_text()
        start, end = _span(text, name)
        fence = text[start:end].splitlines()[0]  # the block's own language (console, json) stays
        README.write_text(text[:start] + f"{fence}\n{shown}\n```\n" + text[end:])
        return
    assert readme_block(name) == shown, (f"README.md's `{name}` example differs from what the command prints "
                                         f"now; if the change is meant, rerun this test with {UPDATE}=1:\n{shown}")
