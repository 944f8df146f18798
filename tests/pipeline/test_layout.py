"""The pipeline's layout is its architecture: every import between its parts points downward, and the bedside app
never imports training code."""

import ast
from pathlib import Path

from tests.conftest import ROOT

# From the bottom up; a module may import its own layer and the layers below it.
LAYERS = [
    {"pipeline.config", "pipeline.runfolder", "pipeline.metrics"},
    {"pipeline.data"},
    {"pipeline.model"},
    {"pipeline.evaluate"},
    {"pipeline.release"},
    {"pipeline.stages"},
    {"pipeline.run"},
    {"pipeline.cli", "pipeline.__main__"},
]


def layer(module: str) -> int:
    for depth, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return depth
    raise AssertionError(f"{module} belongs to no layer of tests/pipeline/test_layout.py")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_pipeline_imports_point_downward():
    upward = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        own = module_name(path)
        for imported in imports(path):
            if imported.startswith("pipeline.") and layer(imported) > layer(own):
                upward.append(f"{own} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_app_never_imports_training_code():
    offending = [f"{module_name(p)} imports {m}" for p in sorted((ROOT / "rxapp").rglob("*.py"))
                 for m in imports(p) if m == "pipeline" or m.startswith("pipeline.")]
    assert not offending, "\n".join(offending)
