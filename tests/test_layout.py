"""The tree shows the pipeline: data -> model -> evaluation -> app, each folder importing only from
the folders before it and the shared top-level `errors`, `config` and `run` (which import no folder); only `cli`
imports every folder, and nothing imports `cli`."""

from __future__ import annotations

import ast
from pathlib import Path

import pronlm

ORDER = ["data", "model", "evaluation", "app"]
PACKAGE = Path(pronlm.__file__).parent


def pronlm_imports(path: Path) -> set[str]:
    """Every `pronlm.*` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pronlm"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pronlm.evaluation import metrics`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pronlm")}
    return found


def layer(module: str) -> int | None:
    """The position of a module's folder in ORDER; None for the shared top-level modules."""
    parts = module.split(".")
    return ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in ORDER else None


def test_imports_run_one_way_down_the_pipeline():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = "pronlm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module == "pronlm.cli":  # wires commands to every folder
            continue
        here = layer(module)
        for target in pronlm_imports(path):
            there = layer(target)
            if target == "pronlm.cli" or (there is not None and (here is None or there > here)):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_folder_says_what_it_owns():
    for name in ORDER:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and len(doc.split()) > 15, name
