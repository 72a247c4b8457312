"""First contact: what a command needs is checked against the Ray it runs on before anything
starts, a stall says what waits for which resource, a run is never reused by accident, and bad
arguments and Ctrl-C are one line each."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import yaml
from test_worker import write_checkpoint

from lavender_ray import resources
from lavender_ray.cli import main, resumable_config
from lavender_ray.commands import train as train_command
from lavender_ray.config import ConfigError, absolute_paths, load_config
from lavender_ray.resources import check_plan, connect, resource_plan
from lavender_ray.runs import check_run
from lavender_ray.train import launch
from lavender_ray.train.launch import finished_run
from lavender_ray.watchdog import StallWatchdog


# --------------------------------------------------------------------------------- resources
def test_the_demo_plan_names_every_piece_and_fits_a_two_core_machine_when_sized():
    plan = resource_plan(load_config("demo"), "train")
    names = [piece.name for phase in plan.phases for piece in phase]
    assert names[:2] == ["train workers", "read and convert tasks"] and "SD actors" in names
    assert plan.cpus() == pytest.approx(2 * 0.5 + 0.25 + 0.25 + 0.5)
    assert plan.gpus() == 0
    demo = resource_plan(load_config("demo"), "demo")
    assert demo.cpus() == max(plan.cpus(), resource_plan(load_config("demo"), "evaluate").cpus())


def test_a_plan_that_cannot_fit_is_refused_naming_the_keys():
    cfg = load_config("demo", ["train.use_gpu=true"])
    with pytest.raises(ConfigError) as err:
        check_plan(resource_plan(cfg, "train"), cpus=2, gpus=0, where="this machine")
    message = str(err.value)
    assert "needs 2 GPUs (it has 0)" in message and "train.use_gpu" in message
    assert "train workers: 2 x 0.5 CPU + 1 GPU" in message


def test_the_running_local_ray_refuses_a_plan_before_any_actor_starts(ray_local):
    """The session's Ray has 4 CPUs and cannot grow: 8 workers of 1 CPU are refused at once."""
    cfg = load_config("demo", ["train.num_workers=8", "train.cpus_per_worker=1"])
    address = ray.get_runtime_context().gcs_address
    actors_before = len(ray.util.state.list_actors(address))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"(?s)needs 9 CPUs \(it has 4\).*train.num_workers"):
        connect(cfg, "train")
    assert time.monotonic() - started < 5
    assert len(ray.util.state.list_actors(address)) == actors_before


def test_evaluate_and_tune_plans_count_what_runs_at_once():
    cfg = load_config("demo", ["eval.pool_size=2", "eval.num_cpus=1"])
    assert resource_plan(cfg, "evaluate").cpus() == pytest.approx(0.25 + 4 * 1 + 1)
    tune = load_config("demo", ["tune.max_concurrent_trials=2"])
    phases = resource_plan(tune, "tune").phases
    assert len(phases) == 2  # the shared extraction, then the trials (without SD actors)
    assert all("SD actors" not in piece.name for piece in phases[1])


# ------------------------------------------------------------------------------------ stalls
def test_work_that_cannot_be_scheduled_is_reported_with_its_request_and_keys(ray_local):
    @ray.remote(num_cpus=64)
    class SDTargetStage:  # named like the SD stage's actors, asking for more than the cluster has
        def ping(self) -> int:
            return 1

    actor = SDTargetStage.remote()
    try:
        watchdog = StallWatchdog(timeout_s=1.0)
        deadline, message = time.monotonic() + 60, None
        while message is None and time.monotonic() < deadline:
            message = watchdog.check()
            time.sleep(0.5)
        assert message is not None, "the pending actor was never reported"
        assert "stalled" in message and "actor SDTargetStage asks for {CPU 64}" in message
        assert "pipeline.sd_num_cpus" in message and "CPU" in message and "free of 4" in message
        for _ in range(4):  # reported once: not again as its creation task, not next poll
            time.sleep(0.5)
            assert watchdog.check() is None
    finally:
        ray.kill(actor)


# ---------------------------------------------------------------------------------- run reuse
def test_a_run_is_new_or_resumed_with_the_same_config(tmp_path):
    cfg = load_config("demo", ["train.run_name=r1", f"train.storage_path={tmp_path}"])
    run_dir = str(tmp_path / "r1")
    assert check_run(cfg, run_dir, resume=False) is False  # new
    assert check_run(cfg, run_dir, resume=None) is False
    with pytest.raises(ConfigError, match="no run 'r1'"):
        check_run(cfg, run_dir, resume=True)
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.yaml").write_text(cfg.to_yaml())
    other = load_config("demo", ["train.run_name=r1", f"train.storage_path={tmp_path}",
                                 "lora.r=16", "optim.lr=2e-4"])
    # stopped before its first checkpoint (a model that did not load): nothing was trained, so
    # --resume starts it again at step 0, with a corrected config too
    with pytest.raises(ConfigError, match="run 'r1' exists at .* without a checkpoint .*add "
                       "--resume to start it again at step 0 with this config.*another"):
        check_run(cfg, run_dir, resume=False)
    assert check_run(other, run_dir, resume=True) is True
    (tmp_path / "r1" / "checkpoint_step0000002").mkdir()
    with pytest.raises(ConfigError, match="run 'r1' exists at [^ ]*: continue it with --resume "
                       r"\(the same preset.*another train.run_name"):
        check_run(cfg, run_dir, resume=False)
    assert check_run(cfg, run_dir, resume=True) is True
    with pytest.raises(ConfigError) as err:
        check_run(other, run_dir, resume=True)
    assert "2 key(s)" in str(err.value) and "lora.r: 8 -> 16" in str(err.value)
    assert yaml.safe_load((tmp_path / "r1" / "config.yaml").read_text())["lora"]["r"] == 8


def no_ray(monkeypatch) -> None:
    """Starting or reaching Ray fails the test: what is checked here is checked before."""

    def started(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(launch, "connect", started)
    monkeypatch.setattr(resources, "connect", started)


def test_a_reused_run_name_is_refused_before_ray_starts(capsys, tmp_path, monkeypatch):
    no_ray(monkeypatch)

    def planned(*args, **kwargs):
        raise AssertionError("the plan ran first")

    monkeypatch.setattr(train_command, "check_before_start", planned)  # a GPU preset's plan
    args = ["train", "--set", "train.run_name=r1", "--set", f"train.storage_path={tmp_path}"]
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.yaml").write_text(
        absolute_paths(load_config("demo", args[2::2])).to_yaml())
    (tmp_path / "r1" / "checkpoint_step0000002").mkdir()  # it trained: its config is fixed
    assert main(args) == 2
    assert "a run 'r1' exists" in capsys.readouterr().err
    assert main([*args, "--set", "lora.r=16", "--resume"]) == 2
    assert "lora.r: 8 -> 16" in capsys.readouterr().err
    assert main(["train", "--set", "train.run_name=r2", "--set", f"train.storage_path={tmp_path}",
                 "--resume"]) == 2
    assert "no run 'r2'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]  # nothing written, no log file
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == [
        "checkpoint_step0000002", "config.yaml"]


@pytest.mark.parametrize("checkpoint", [None, 2])
def test_a_failed_run_says_how_it_goes_on(checkpoint, capsys, tmp_path, monkeypatch):
    """A run that fails (here `train()` raising once the run folder exists, as a worker's error
    does): one line, the log, and what to do next: continue from its last checkpoint, or,
    without one, start it again with the corrected values (`runs.check_run`)."""
    no_ray(monkeypatch)
    args = ["train", "--set", "train.run_name=r1", "--set", f"train.storage_path={tmp_path}"]
    run = tmp_path / "r1"

    def failing(cfg, **kwargs):
        run.mkdir()
        (run / "config.yaml").write_text(cfg.to_yaml())
        if checkpoint:
            write_checkpoint(run, checkpoint)
        raise RuntimeError("a worker died")

    monkeypatch.setattr(launch, "train", failing)
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-3].startswith("lavender train: failed: RuntimeError: a worker died (at ")
    assert err[-2].startswith(f"  the whole traceback is in {run}/logs/train-")
    where = (f"its last checkpoint is {run}/checkpoint_step0000002 (step 2 of 30)" if checkpoint
             else "it has no complete checkpoint (it starts again at step 0)")
    fix = "" if checkpoint else " with your corrected --preset or --set values"
    assert err[-1] == (f"  run 'r1' failed; {where}. Once the cause is fixed, `lavender train "
                       f"--resume --set train.storage_path={tmp_path} --set train.run_name=r1`"
                       f"{fix} continues it")


def test_a_failure_note_that_cannot_read_the_storage_leaves_the_error_alone(monkeypatch):
    def unreachable(path):
        raise OSError(f"{path}: the bucket cannot be reached")

    monkeypatch.setattr(launch, "read_text", unreachable)
    assert launch.failure_note(load_config("demo", ["train.run_name=r1"])) is None


MISTAKES_PROBE = r"""
import json, sys
from lavender_ray.cli import main
storage = sys.argv[1]
codes = [main(args) for args in (
    ["train", "--preset", "nosuch"], ["train", "--set", "train.nosuch=1"],
    ["train", "--set", "train.run_name=r1", "--set", f"train.storage_path={storage}"],
    ["demo", "--preset", "nosuch"], ["plan", "--preset", "nosuch"], ["plan", "--set", "lora.r=x"],
    ["tune", "--preset", "nosuch"], ["tune", "--set", "tune.nosuch=1"],
    ["train", "--set", "vlm.model_id=/nowhere/vlm"], ["tune", "--set", "sd.model_id=/nowhere"],
    ["train", "--set", "vlm.family=llava"],
    ["train", "--set", f"data.sources=[{{name: web, format: llava, path: {storage}/m.jsonl}}]"])]
print(json.dumps([codes, sorted(m for m in ("ray", "torch", "transformers", "diffusers")
                                if m in sys.modules)]))
"""


def test_a_mistyped_preset_key_or_reused_run_is_told_before_ray_or_torch_is_imported(tmp_path):
    """`train`, `demo`, `plan` and `tune` load the config and check the run folder, the model
    folders and the first rows of each source before they import Ray, torch or the model
    libraries (5-10 s on 2 cores): a typo is told at once."""
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.yaml").write_text("{}")
    (tmp_path / "m.jsonl").write_text(json.dumps({"images": ["a.png"], "messages": []}) + "\n")
    probe = subprocess.run([sys.executable, "-c", MISTAKES_PROBE, str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    codes, imported = json.loads(probe.stdout.splitlines()[-1])
    assert codes == [2] * 12, probe.stderr
    assert imported == [], probe.stderr
    assert "unknown preset 'nosuch'" in probe.stderr and "a run 'r1' exists" in probe.stderr
    assert "vlm.model_id='/nowhere/vlm': no such folder" in probe.stderr
    assert "the tiny model of this family is 'tiny/llava'" in probe.stderr
    assert "data.sources[web]: its first 1 rows (in m.jsonl) are all rejected" in probe.stderr


def test_resuming_a_finished_run_prints_its_summary_without_starting_ray(capsys, tmp_path,
                                                                          monkeypatch):
    no_ray(monkeypatch)
    overrides = ["train.run_name=r1", f"train.storage_path={tmp_path}", "train.max_steps=4"]
    cfg = absolute_paths(load_config("demo", [*overrides, "lora.r=16"]))  # a preset of one's own
    run = tmp_path / "r1"
    (run / "checkpoint_step0000002").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "metrics.jsonl").write_text('{"step": 2, "loss/total": 7.5}\n')
    assert finished_run(cfg, str(run)) is None  # 2 of 4 steps: resumed by Ray Train
    (run / "checkpoint_step0000004").mkdir()
    assert finished_run(cfg, str(run)) is None  # no adapter/ yet: the end was cut short
    (run / "adapter").mkdir()
    (run / "adapter" / "config.yaml").write_text(cfg.to_yaml())
    assert finished_run(cfg, str(run)) is None  # an adapter/ cut short: vlm/ and Aligner missing
    (run / "adapter" / "vlm").mkdir()
    (run / "adapter" / "aligner.safetensors").write_bytes(b"")
    (run / "metrics.jsonl").write_text('{"step": 2, "loss/total": 7.5}\n'
                                       '{"step": 4, "loss/total": 6.25, "records": 8}\n')
    # no --preset: the run's own config.yaml, so naming the run is enough
    assert main(["train", "--resume", "--set", "train.run_name=r1", "--set",
                 f"train.storage_path={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    assert "run r1 has finished (train.max_steps=4 reached): nothing to train" in printed
    assert f"checkpoint: {run}/checkpoint_step0000004" in printed
    assert f"adapter:    {run}/adapter" in printed
    assert "metrics:    step=4  loss/total=6.25  records=8" in printed


def test_resume_without_a_preset_takes_the_saved_config_and_the_set_values_on_top(tmp_path):
    def args(*overrides: str, preset: str | None = None, resume: bool = True):
        return argparse.Namespace(preset=preset, resume=resume, overrides=[
            "train.run_name=r1", f"train.storage_path={tmp_path}", *overrides])

    def saved(cfg):
        return f"{tmp_path}/{cfg.train.run_name}/config.yaml"

    assert resumable_config(args(), saved).lora.r == 8  # nothing saved: demo's, refused later
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.yaml").write_text(load_config("demo", ["lora.r=16"]).to_yaml())
    assert resumable_config(args(), saved).lora.r == 16
    assert resumable_config(args("lora.r=4"), saved).lora.r == 4  # then check_run names it
    assert resumable_config(args(preset="demo"), saved).lora.r == 8
    assert resumable_config(args(resume=False), saved).lora.r == 8
    assert resumable_config(args(), saved).train.run_name == "r1"


# ---------------------------------------------------------------------------- one-line errors
def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_or_malformed_paths_are_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["evaluate", "--adapter", str(tmp_path / "nope"),
                                  "--bench", "synthetic"])
    assert "--adapter" in err and "nope' does not exist" in err and "a saved run" in err
    (tmp_path / "file.txt").write_text("x")
    err = one_line_error(capsys, ["show-targets", "--targets", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "pngs")])
    assert "--targets" in err and "nope" in err
    err = one_line_error(capsys, ["show-targets", "--targets", str(tmp_path),
                                  "--out", str(tmp_path / "file.txt")])
    assert "--out" in err and "file.txt" in err


@pytest.mark.parametrize(("command", "args", "how"), [
    ("train", ["--preset", "demo"], "; a run that has started continues from its last "
     "checkpoint with `lavender train --resume --set train.run_name=<its name>`"),
    ("extract", [], "; the targets written so far stay in the cache: the same command goes on "
     "from them (it counts them as already cached)"),
    ("tune", [], "; the search continues with `lavender tune --resume --set "
     "train.run_name=<experiment>`: finished trials are kept"),
    ("evaluate", ["--adapter", "x"], ""),  # nothing to go on from
])
def test_ctrl_c_is_one_line_and_exit_code_130(capsys, monkeypatch, command, args, how):
    def interrupted(args):
        raise KeyboardInterrupt

    module = importlib.import_module(f"lavender_ray.commands.{command}")
    monkeypatch.setattr(module, "run", interrupted)
    assert main([command, *args]) == 130
    assert capsys.readouterr().err.strip() == f"lavender {command}: interrupted (Ctrl-C){how}"


def test_ctrl_c_in_fit_names_the_checkpoint_to_go_on_from_and_puts_back_the_handler(
        capsys, monkeypatch, tmp_path):
    """Ray Train's SIGINT handler aborts the run, then `fit()` ends in `SystemExit` (exit code 1,
    nothing printed, before this): `lavender train` names the run's last complete checkpoint and
    the command that continues it, exits 130, and the SIGINT handler from before `fit()` is back
    (Ray's stays installed and would abort the finished run on a later Ctrl-C)."""
    cfg = absolute_paths(load_config("demo", [f"train.storage_path={tmp_path}",
                                              "train.run_name=r1", "train.num_workers=2"]))
    run_dir = f"{tmp_path}/r1"
    write_checkpoint(tmp_path / "r1", 2)
    write_checkpoint(tmp_path / "r1", 4, ranks=(0,))  # rank 1 was stopped while writing it

    class Trainer:
        def fit(self):
            signal.signal(signal.SIGINT, lambda *_: None)  # as Ray Train's fit() does
            raise SystemExit(1)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(launch.TrainingInterrupted) as stopped:
        launch.fit(Trainer(), cfg, run_dir)
    assert signal.getsignal(signal.SIGINT) is before

    def interrupted(args):
        raise stopped.value

    monkeypatch.setattr(train_command, "run", interrupted)
    assert main(["train"]) == 130
    assert capsys.readouterr().err.strip() == (
        f"lavender train: interrupted (Ctrl-C); run 'r1' stopped; its last checkpoint is "
        f"{run_dir}/checkpoint_step0000002 (step 2 of {cfg.train.max_steps}). Continue it with "
        f"`lavender train --resume --set train.storage_path={tmp_path} --set "
        "train.run_name=r1`")
    empty = absolute_paths(load_config("demo", [f"train.storage_path={tmp_path}",
                                                "train.run_name=r2"]))
    assert "no complete checkpoint (it starts again at step 0)" in str(
        launch.TrainingInterrupted(empty, f"{tmp_path}/r2"))


def test_a_watchdog_stopped_with_its_run_says_nothing_of_ray_going_down():
    """The State API call still open when the run ends (Ctrl-C takes Ray down) fails after
    `stop()`: no note. Failing while the run goes on, it says the run is unwatched."""
    out = io.StringIO()
    watchdog = StallWatchdog(timeout_s=1.0, out=out, poll_s=0.05)
    looking = threading.Event()

    def check_while_ray_goes_down(now=None):
        looking.set()
        watchdog._stop.wait(5)
        raise ConnectionError("Failed to connect to API server")

    watchdog.check = check_while_ray_goes_down
    watchdog.start()
    assert looking.wait(5)
    watchdog.stop()
    assert out.getvalue() == ""

    running = StallWatchdog(timeout_s=1.0, out=out, poll_s=0.05)
    running.check = lambda now=None: (_ for _ in ()).throw(ConnectionError("no API server"))
    running.start()
    deadline = time.monotonic() + 5
    while not out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    running.stop()
    assert out.getvalue() == ("note: the stall watchdog stopped (ConnectionError: no API "
                              "server)\n")


# ---------------------------------------------------------------------------- Ray Data tasks
def _plan_cpus(ds) -> dict[str, float]:
    """{operator name: CPUs per task} of every task-running operator in `ds`'s logical plan."""
    found, todo = {}, [ds._logical_plan.dag]
    while todo:
        op = todo.pop()
        todo += op.input_dependencies
        args = getattr(op, "ray_remote_args", None)
        if args is not None:
            found[op.name] = args.get("num_cpus", 1.0)  # Ray Data's default: a whole CPU
        elif op.name == "ListFiles":  # Ray's Parquet V2 file listing: always a whole CPU
            found[op.name] = 1.0
    return found


def test_every_read_and_convert_task_asks_for_data_read_num_cpus(ray_local, tmp_path):
    """Ray Data's read and map tasks take a whole CPU unless told: on a 2-core machine whose
    CPUs the stages hold they would wait forever, and the plan counts them at
    `data.read_num_cpus`. Every operator of every reader asks for exactly that (Parquet is
    read without Ray's V2 file-listing task, which always takes a whole CPU)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from lavender_ray.pipeline.benchmarks import read_benchmark
    from lavender_ray.pipeline.read import read_sources

    Image.new("RGB", (24, 12), "orange").save(tmp_path / "a.png")
    turn = [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A."}]
    record = {"id": "a", "images": ["a.png"], "messages": turn}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    pq.write_table(pa.table({"id": ["b"], "image_path": [str(tmp_path / "a.png")],
                             "question": ["What?"], "answer": ["A."]}), tmp_path / "rec.parquet")
    (tmp_path / "bench.tsv").write_text("index\tquestion\tanswer\timage_path\n0\tWhat?\tA.\ta.png\n")
    sources = [{"name": "mine", "format": "messages", "path": str(tmp_path / "train.jsonl")},
               {"name": "rec", "format": "records", "path": str(tmp_path / "rec.parquet")}]
    cfg = load_config("demo", {"data.sources": sources, "data.read_num_cpus": 0.3})
    pq.write_table(pa.table({"index": ["0"], "question": ["What?"], "answer": ["A."],
                             "image_path": [str(tmp_path / "a.png")]}), tmp_path / "b.parquet")
    for ds in (read_sources(cfg, str(tmp_path / "rejects")),
               read_benchmark(str(tmp_path / "bench.tsv"), "b", str(tmp_path / "rejects"),
                              num_cpus=0.3),
               read_benchmark(str(tmp_path / "b.parquet"), "b", str(tmp_path / "rejects"),
                              num_cpus=0.3)):
        cpus = _plan_cpus(ds)
        assert any(name.startswith("Read") for name in cpus), cpus
        assert set(cpus.values()) == {0.3}, cpus
