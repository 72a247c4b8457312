"""The package's layering holds: `lint-imports` keeps every contract of pyproject.toml, and
breaks when a module imports across a line it must not cross."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run in `root` (it reads `root`/pyproject.toml and imports `root`'s copy of
    the package first, the working folder being first on its path)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300
    )


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("eval/report.py", "import ray.train", "Only train and tune import ray.train"),
        ("sd/target.py", "from lavender_ray.vlm import base", "sd is diffusers only"),
        ("config/loading.py", "import transformers", "The pure core"),
        ("runs/__init__.py", "from lavender_ray.train import step", "Layers"),
        ("vlm/base.py", "from lavender_ray import cli", "never imports the command line"),
    ],
)
def test_a_crossing_import_breaks_its_contract(tmp_path, module, line, broken):
    """A copy of the package with one forbidden import added: that contract breaks."""
    for name in ("lavender_ray", "tests"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "lavender_ray" / module).open("a") as f:
        f.write(f"\n{line}  # deliberately forbidden\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section, result.stdout


# The modules a command's driver process imports: the SD stage runs in Ray actors, so none of
# them may load diffusers (~5 s of CPU per command on two cores) at import.
DRIVERS = ("lavender_ray.train.launch", "lavender_ray.tune", "lavender_ray.eval.evaluate",
           "lavender_ray.pipeline.extract", "lavender_ray.pipeline.inspect")


def loaded_at_import(module: str) -> set[str]:
    """Every module `import module` loads through statements outside functions and classes,
    followed through the package's own files (its parent packages included); third-party
    modules are listed, not followed."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            parent = ".".join(parts[:i])
            if parent in seen:
                continue
            seen.add(parent)
            todo.extend(module_level_imports(parent))
    return seen


def module_level_imports(name: str) -> list[str]:
    path = ROOT.joinpath(*name.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not name.startswith("lavender_ray") or not file.is_file():
        return []
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    statements = list(ast.parse(file.read_text()).body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.If, ast.Try)):  # not `if TYPE_CHECKING:`, which never runs
            if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
                statements.extend(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    statements.extend(handler.body)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)  # submodules, if any
    return found


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_driver_loads_diffusers_at_import(driver):
    loaded = loaded_at_import(driver)
    assert "lavender_ray.config" in loaded  # the walk follows the package's imports
    assert not {m for m in loaded if m.split(".")[0] == "diffusers"}, sorted(
        m for m in loaded if m.startswith("lavender_ray.sd"))


def test_the_import_walk_finds_diffusers_where_it_is_loaded():
    assert "diffusers" in loaded_at_import("lavender_ray.sd.extractor")
