"""The package's layering holds: `lint-imports` keeps every contract of pyproject.toml, and
breaks when a module imports across a line it must not cross."""

from __future__ import annotations

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
        ("runs.py", "from lavender_ray.train import step", "Layers"),
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
