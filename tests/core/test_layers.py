"""The packages import downwards only (issue 36 item 6): a lower layer never imports a higher one, so
eval_gates/ does not reach back up into registry/ and the pool (filters/pool.py) needs no flow."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# Lowest first. trainers below teachers and filters: the teacher and the length filter use its tokenizer
# and base-model helpers; flows on top, as they run the gateway's pieces too (traffic refresh, the CLI).
LAYERS = ["core", "trainers", "filters", "teachers", "eval_gates", "registry", "gateway", "flows"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("pkg", LAYERS)
def test_no_package_imports_a_higher_layer(pkg):
    higher = set(LAYERS[LAYERS.index(pkg) + 1:])
    found = {f"{f.relative_to(ROOT)} imports {m}" for f in (ROOT / pkg).rglob("*.py") for m in _imports(f) & higher}
    assert not found, f"{pkg} imports a higher layer: {sorted(found)}"
