"""dvc.yaml's code deps follow the code, so that `dvc status` and `dvc repro` see every change
that can alter a stage's outputs.

Each stage must depend on exactly the `nriqa` modules that its Python deps (its script, and
service.py for package) import, directly or through other `nriqa` modules, at module level or
inside a function: a missing one leaves a stale cache that DVC calls up to date, an extra one
reruns a stage for nothing. A stage that ships the whole package (package: bentofile.yaml
includes /nriqa/*.py) depends on the `nriqa` folder itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT

PACKAGE = PROJECT / "nriqa"
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """The `nriqa.<module>` names a Python file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found
            if name.split(".")[0] == "nriqa" and (PACKAGE.parent / f"{name.replace('.', '/')}.py").is_file()}


def module_files(python_files: list[Path]) -> set[str]:
    """Every nriqa module file the files load, transitively; importing any module runs __init__.py."""
    pending, seen = list(python_files), set()
    while pending:
        modules = imported_modules(pending.pop())
        files = {f"{name.replace('.', '/')}.py" for name in modules}
        # Importing nriqa.a.b first runs nriqa/__init__.py and nriqa/a/__init__.py.
        files |= {"/".join(name.split(".")[:depth]) + "/__init__.py"
                  for name in modules for depth in range(1, name.count(".") + 1)}
        for new in files - seen:
            seen.add(new)
            pending.append(PROJECT / new)
    return seen


def declared(stage: dict) -> list[str]:
    return [dep for dep in stage.get("deps", []) if isinstance(dep, str)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_exactly_the_modules_it_imports(name):
    deps = declared(STAGES[name])
    script = STAGES[name]["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py"
    assert script in deps, f"{name}: its script {script} is not a dep"
    # `python -m stages.X` runs the package's __init__.py (the process set-up) first.
    assert "stages/__init__.py" in deps, f"{name}: stages/__init__.py is not a dep"
    python_deps = [PROJECT / dep for dep in deps if dep.endswith(".py") and
                   not dep.startswith("nriqa/")]
    listed = {dep for dep in deps if dep.startswith("nriqa/")}
    if "nriqa" in deps:  # the whole package
        assert not listed, f"{name}: depends on the nriqa folder and on {sorted(listed)}"
        return
    needed = module_files(python_deps)
    assert listed == needed, (f"{name}: missing {sorted(needed - listed)}, "
                              f"not imported {sorted(listed - needed)}")


def test_package_depends_on_every_module_it_ships():
    bentofile = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    assert "/nriqa/**/*.py" in bentofile["include"]
    assert "nriqa" in declared(STAGES["package"])
    # Bytecode beside the modules must not count as a change of the package.
    ignored = (PROJECT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored


def test_imports_are_found_at_module_level_and_in_functions(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text("from nriqa.ops import tracking\nfrom nriqa.core import errors\nimport nriqa.model.network\n"
                      "def f():\n    from nriqa.data.shards import read_split\n    import numpy\n")
    assert imported_modules(source) == {"nriqa.ops.tracking", "nriqa.core.errors", "nriqa.model.network",
                                        "nriqa.data.shards"}


def params_read_by(script: Path) -> set[str]:
    """`section.key` for each params.yaml value a stage script reads itself: `config.s.k` on
    what `load_config()` returned, or `settings.k` where `settings = load_config().s` (or
    `config.s`); sections handed whole to library functions are not followed."""
    tree = ast.parse(script.read_text(), str(script))

    def is_load_config(node) -> bool:
        return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_config"

    whole, sections = set(), {}  # names bound to load_config() / to one of its sections
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            if is_load_config(value):
                whole.add(name)
            elif isinstance(value, ast.Attribute) and (
                    is_load_config(value.value) or getattr(value.value, "id", None) in whole):
                sections[name] = value.attr
    read = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        inner = node.value
        if isinstance(inner, ast.Attribute) and (is_load_config(inner.value) or
                                                 getattr(inner.value, "id", None) in whole):
            read.add(f"{inner.attr}.{node.attr}")
        elif getattr(inner, "id", None) in sections:
            read.add(f"{sections[inner.id]}.{node.attr}")
    return read


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_the_params_its_script_reads(name):
    """A param read but not declared: changing it leaves the stage's output stale, and DVC
    calls it up to date (`trainset.pristine_fraction` was missed this way)."""
    script = PROJECT / (STAGES[name]["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py")
    declared_params = {p for group in STAGES[name].get("params", [])
                       for p in ([group] if isinstance(group, str) else group)}
    undeclared = {p for p in params_read_by(script)
                  if p not in declared_params and p.split(".")[0] not in declared_params}
    assert not undeclared, f"{name} reads {sorted(undeclared)} but dvc.yaml does not declare them"


def test_params_read_are_found():
    assert params_read_by(PROJECT / "stages" / "trainset.py") >= {
        "trainset.images", "trainset.seed", "trainset.pristine_fraction"}
    assert params_read_by(PROJECT / "stages" / "preprocess.py") >= {
        "preprocess.split", "trainset.mix", "model.input_size"}
