"""The package's shape: layers in pipeline order, no import circles, no import-time set-up.

Layers, lowest first: `nriqa.core` (errors, stage helpers, decoding and the crop grid, the type
taxonomy, metrics), `data`, `model`, `ops`, `evaluation`, `serving`, then the command line. A
module imports only from its own layer or lower ones. nriqa imports sit at the top of a module,
except the few lazy ones listed here, each marked with a `# lazy:` reason in the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT

PACKAGE = PROJECT / "nriqa"
LAYERS = ["core", "data", "model", "ops", "evaluation", "serving", "cli"]
LAZY = {
    ("nriqa.cli", "nriqa.ops.runs"),
    ("nriqa.cli", "nriqa.serving.scoring"),
    ("nriqa.cli", "nriqa.serving.batch"),
    ("nriqa.cli", "nriqa.evaluation.external"),
    ("nriqa.data.examples", "nriqa.data.distortions"),
    ("nriqa.data.examples", "nriqa.data.synthetic"),
    ("nriqa.model.bundle", "nriqa.model.network"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # nriqa/__init__.py: the version only
    name = "cli" if parts[1] in ("cli", "__main__") else parts[1]
    return LAYERS.index(name)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported nriqa module, inside a function?, line) for every nriqa import of a file."""
    tree = ast.parse(path.read_text())
    type_checking = {id(node) for block in tree.body
                     if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                     for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nriqa"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("nriqa")]
        else:
            continue
        found += [(name, node.col_offset > 0, node.lineno) for name in names]
    return found


GRAPH = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_runs_back_up_a_layer():
    upward = [f"{module} ({LAYERS[layer(module)]}) imports {target} ({LAYERS[layer(target)]})"
              for module, found in GRAPH.items() for target, _, _ in found
              if layer(target) > layer(module)]
    assert not upward


def test_no_import_circles():
    edges = {module: {target for target, _, _ in found if target in GRAPH and target != module}
             for module, found in GRAPH.items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(edges[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)


def test_nriqa_imports_inside_functions_are_the_listed_lazy_ones_with_a_reason():
    lazy = set()
    for module, found in GRAPH.items():
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        lines = (path if path.is_file() else path.with_suffix("") / "__init__.py").read_text().splitlines()
        for target, inside, line in found:
            if inside:
                lazy.add((module, target))
                nearby = " ".join(lines[max(0, line - 4):line])  # a comment may head a group
                assert "# lazy:" in nearby, f"{module}:{line} imports {target} lazily without a reason"
    assert lazy == LAZY


def test_no_sys_path_edits():
    sources = [p for folder in ("nriqa", "stages", "tests", "benchmarks", "experiments")
               for p in (PROJECT / folder).rglob("*.py") if p != Path(__file__)] + [PROJECT / "service.py"]
    edits = [f"{p.relative_to(PROJECT)}:{n}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "sys.path." in line and "insert(" in line or "sys.path.append(" in line]
    assert not edits


@pytest.mark.parametrize("module", ["nriqa", "nriqa.ops.tracking", "nriqa.serving.scoring",
                                    "nriqa.model.prediction", "nriqa.core.runtime"])
def test_importing_configures_nothing(module):
    check = (f"import os, sys; before = dict(os.environ); import {module}; "
             "assert dict(os.environ) == before, 'environment changed on import'; "
             "assert not [f for f in sys.meta_path if type(f).__module__.startswith('nriqa')], 'import hook'")
    subprocess.run([sys.executable, "-c", check], cwd=PROJECT, check=True)


def test_every_script_settles_its_process_first():
    """The benchmarks and experiments are entry points too: their results must come from the
    same pinned CPU kernels as the pipeline's (stages get it from stages/__init__.py)."""
    scripts = [p for folder in ("benchmarks", "experiments") for p in (PROJECT / folder).glob("*.py")
               if '\nif __name__ == "__main__":\n' in p.read_text()]
    assert scripts
    unsettled = [p.name for p in scripts
                 if "    configure()" not in p.read_text().split('\nif __name__ == "__main__":\n')[1]]
    assert not unsettled
    assert "\nconfigure()\n" in (PROJECT / "stages" / "__init__.py").read_text()
