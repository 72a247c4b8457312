"""The package's layering holds: `lint-imports` keeps every contract of pyproject.toml, and
breaks when a module imports across a line it must not cross; the commands' driver modules load
no model stack they do not run. The suite's own order (`conftest.LONGEST_MODULES`) names modules
that exist, and the stream run is read by one module."""

from __future__ import annotations

import json
import re
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


# The modules a command's driver process imports, strictest first. The SD stage runs in Ray
# actors and the training loop in Ray Train workers, so no driver loads diffusers (~5 s of CPU
# per command on two cores), and the train, tune and evaluate drivers (one per Tune trial too)
# load none of the stack of the train workers or the inference actors either; `train.entry`,
# the function Ray Train unpickles, loads nothing, nor does `train.faults` (a driver unpickles
# its exception when a worker raises it); extract, inspect and evaluate plan Ray Data
# pipelines and load no torch (their Ray Data tasks import the same modules).
MODEL_STACKS = ["deepspeed", "diffusers", "peft", "transformers"]
DRIVERS = [  # (module, the stacks looked for, those it loads)
    ("lavender_ray.train.entry", [*MODEL_STACKS, "ray", "torch"], []),
    ("lavender_ray.train.faults", [*MODEL_STACKS, "ray", "torch"], []),  # unpickled by drivers
    ("lavender_ray.pipeline.extract", [*MODEL_STACKS, "torch"], []),
    ("lavender_ray.pipeline.inspect", [*MODEL_STACKS, "torch"], []),
    ("lavender_ray.eval.evaluate", [*MODEL_STACKS, "torch"], []),
    ("lavender_ray.train.launch", [*MODEL_STACKS, "torch"], ["torch"]),  # TorchTrainer's: the
    ("lavender_ray.tune", MODEL_STACKS, []),                              # probe sees a stack
]
IMPORT_PROBE = """
import importlib, json, sys
loaded = {}
for module, stacks in json.loads(sys.argv[1]):
    importlib.import_module(module)
    loaded[module] = [m for m in stacks if m in sys.modules]
print(json.dumps(loaded))
"""


@pytest.mark.slow  # a fresh interpreter importing the drivers' stacks (~10 s)
def test_no_driver_loads_a_model_stack_at_import():
    """One fresh interpreter imports each module in turn (a module's own lazy imports count:
    the check is `sys.modules`); the lists only narrow, so an earlier import masks nothing."""
    looked_for = json.dumps([(module, stacks) for module, stacks, _ in DRIVERS])
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE, looked_for], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    loaded = json.loads(probe.stdout.splitlines()[-1])
    assert loaded == {module: expected for module, _, expected in DRIVERS}


# --------------------------------------------------------------------- the suite's own order
def test_the_longest_modules_named_for_the_order_exist():
    """A renamed module would silently drop to the back of the queue (`conftest.py`)."""
    from conftest import LONGEST_MODULES

    missing = [name for name in LONGEST_MODULES if not (ROOT / "tests" / name).is_file()]
    assert not missing, f"conftest.LONGEST_MODULES names modules that do not exist: {missing}"


def test_the_shared_stream_run_is_read_by_one_module():
    """Each test process builds the session fixtures of the modules it takes: readers of the
    ~2-minute stream run in two modules could build it twice (`shared_runs`)."""
    reads = re.compile(r"^def test_\w+\([^)]*\bstream_run\b", re.M)
    readers = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
               if reads.search(p.read_text())]
    assert readers == ["test_train.py"], f"stream_run is read by {readers}: keep them in one module"
