"""The quiet console and the progress displays (`lavender_ray.console`, `train.progress`).

Progress: live tqdm bars on a terminal, plain lines otherwise (throttled, the last one always),
the ETA maths, tailing a growing metrics.jsonl (a half-written last line waits). Logging: what a
quiet console sends to its log file and what stays on the console, the marked warnings of Ray
workers, `--verbose` changing nothing. And the issue's test: `lavender demo` prints at most 60
lines, its progress and its summary."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from commands import run_lavender

from lavender_ray import console
from lavender_ray.cli import build_parser
from lavender_ray.console import (
    WORKER_MARK,
    Console,
    Progress,
    WorkerOutput,
    eta_seconds,
    format_duration,
    format_rate,
    mark_worker_warnings,
)
from lavender_ray.storage import JsonlTail
from lavender_ray.train.progress import TrainFollower, follow_training, train_status


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def plain(total=6, every_s=0.0, clock=None, **kwargs) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    shown = Progress("train", total, unit="steps", stream=out, every_s=every_s,
                     clock=clock or Clock(), **kwargs)
    return shown, out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


# ------------------------------------------------------------------------------- ETA maths
def test_eta_is_the_units_left_at_the_rate_and_unknown_without_a_total_or_rate():
    assert eta_seconds(3, 6, 0.5) == pytest.approx(6.0)
    assert eta_seconds(6, 6, 0.5) == 0.0
    assert eta_seconds(3, None, 0.5) is None
    assert eta_seconds(3, 6, None) is None and eta_seconds(3, 6, 0.0) is None
    assert format_duration(3725) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(None) == "?" and format_duration(float("inf")) == "?"


def test_a_rate_under_one_a_second_reads_per_minute():
    """A Tune trial every minute or so: "0.954 trials/min", not "0.0159 trials/s"."""
    assert format_rate(13.6, "samples") == "13.6 samples/s"
    assert format_rate(1.0, "images") == "1 images/s"
    assert format_rate(0.5, "steps") == "30 steps/min"
    assert format_rate(0.0159, "trials") == "0.954 trials/min"


def test_the_measured_rate_leaves_the_start_up_time_out():
    clock = Clock()
    shown, out = plain(total=24, clock=clock)
    clock.now = 100.0  # SD actors and models loading: nothing done yet
    shown.set(0)
    clock.now = 104.0
    shown.set(8)  # the first progress: the rate is measured from here
    clock.now = 108.0
    shown.set(16)
    assert shown.rate(clock.now) == pytest.approx(2.0)
    assert lines(out)[-1] == "train: 16/24 steps (67%)  2 steps/s  ETA 0:00:04  [0:01:48]"


def test_train_status_gives_loss_samples_per_second_and_eta_from_the_reports():
    first = {"step": 2, "records": 16, "loss/total": 6.4123, "time/step_s": 0.5}
    fields, eta = train_status(first, None, max_steps=6)
    assert fields == ["loss 6.412", "16 samples/s"]  # 8 records a step at 0.5 s a step
    assert eta == pytest.approx(2.0)
    second = {"step": 4, "records": 40, "loss/total": 5.0, "time/step_s": 0.25}
    fields, eta = train_status(second, first, max_steps=6)
    assert fields == ["loss 5", "48 samples/s"]  # (40 - 16) / 2 steps at 0.25 s
    assert eta == pytest.approx(0.5)
    assert train_status({"step": 1}, None, 6) == ([], None)


def test_a_first_report_that_mostly_waited_for_the_pipeline_shows_the_wait_not_a_rate():
    """2 steps in 30 s, 28 s of them waiting for the SD actors' first batches: no 0.27
    samples/s and 60 s ETA, but the wait and an ETA at the steps' own 1 s."""
    first = {"step": 2, "records": 8, "loss/total": 6.0, "time/step_s": 15.0,
             "time/data_wait_s": 28.0, "time/first_batch_s": 28.0}
    fields, eta = train_status(first, None, max_steps=6)
    assert fields == ["loss 6", "first batches after 28 s"]
    assert eta == pytest.approx(4.0)
    # a short wait: the rate as before
    steady = {**first, "time/data_wait_s": 2.0, "time/first_batch_s": 2.0}
    assert train_status(steady, None, 6)[0] == ["loss 6", "16 samples/min"]  # 0.267 a second
    later = {"step": 4, "records": 16, "time/step_s": 15.0, "time/data_wait_s": 28.0,
             "time/first_batch_s": 28.0}
    assert "samples/min" in train_status(later, first, 6)[0][0]  # a slow pipeline later: a rate
    # the first batch waited 11 s, the next two 2.25 s each for a slow pipeline: the ETA is
    # from their 1.67 s a step (the wait of the later batches counts), not 0.16 s
    slow = {"step": 3, "records": 6, "time/step_s": 5.33, "time/data_wait_s": 15.5,
            "time/first_batch_s": 11.0}
    fields, eta = train_status(slow, None, max_steps=6)
    assert fields == ["first batches after 11 s"]
    assert eta == pytest.approx(3 * (5.33 * 3 - 11.0) / 3)


# ----------------------------------------------------------------------------- the display
def test_plain_lines_one_per_update_with_the_fields_and_eta():
    clock = Clock()
    shown, out = plain(clock=clock)
    clock.now = 10.0
    shown.set(3, eta_s=30.0, fields=["loss 6.41", "16 samples/s"])
    shown.set(3, eta_s=30.0, fields=["loss 6.41"])  # no progress: no new line
    clock.now = 20.0
    shown.set(6, eta_s=0.0, fields=["loss 6.38"])
    shown.close()
    assert lines(out) == [
        "train: 3/6 steps (50%)  loss 6.41  16 samples/s  ETA 0:00:30  [0:00:10]",
        "train: 6/6 steps (100%)  loss 6.38  [0:00:20]",
    ]


def test_plain_lines_are_throttled_but_the_last_state_is_always_printed():
    clock = Clock()
    shown, out = plain(total=None, every_s=30.0, clock=clock)
    for now, n in [(1, 1), (5, 2), (20, 3), (40, 4), (45, 5)]:
        clock.now = float(now)
        shown.set(n)
    shown.close()
    counts = [re.match(r"train: (\d+) steps", line).group(1) for line in lines(out)]
    assert counts == ["1", "4", "5"]
    silent, out = plain(total=None)
    silent.close()  # nothing happened: nothing to say
    assert out.getvalue() == ""


def test_a_live_bar_redraws_one_line_instead_of_printing_lines():
    out = Terminal()
    shown = Progress("train", 6, unit="steps", stream=out, live=True)
    for step in (2, 4, 6):
        shown.set(step, eta_s=1.0, fields=[f"loss {step}"])
    shown.close()
    text = out.getvalue()
    assert "\r" in text and "6/6 steps" in text and "loss 6" in text
    assert text.count("\n") <= 1  # tqdm leaves the bar as one line


def test_the_display_follows_the_console():
    assert console.progress("x").stream is None  # no command: silent
    with Console("test", tempfile.mkdtemp(), stream=Terminal()):
        assert console.progress("x").bar is not None  # quiet on a terminal: live
    with Console("test", tempfile.mkdtemp(), stream=io.StringIO()):
        assert console.progress("x").bar is None  # a pipe or file: plain lines
    with Console("test", tempfile.mkdtemp(), verbose=True, stream=Terminal()):
        assert console.progress("x").bar is None  # Ray prints too: plain lines


# ---------------------------------------------------------------------------- metrics tail
def report(step: int, records: int) -> str:
    return json.dumps({"step": step, "records": records, "loss/total": 7.0 - step / 10,
                       "time/step_s": 0.5}) + "\n"


@pytest.mark.parametrize("as_uri", [False, True])
def test_tailing_a_growing_jsonl_returns_complete_lines_only(tmp_path, as_uri):
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail(f"file://{path}" if as_uri else str(path))
    assert tail.read_new() == []  # not there yet
    first, second = report(1, 8), report(2, 16)
    path.write_text(first + second[:10])  # rank 0 is half-way through the second line
    assert [r["step"] for r in tail.read_new()] == [1]
    assert tail.read_new() == []
    with open(path, "a") as f:
        f.write(second[10:] + "{not json\n" + report(3, 24))
    assert [r["step"] for r in tail.read_new()] == [2, 3]  # the corrupt line is skipped
    path.write_text(report(1, 8))  # rewritten shorter (a resumed run): read from the start
    assert [r["step"] for r in tail.read_new()] == [1]


def test_the_train_display_follows_the_metrics_log(tmp_path):
    shown, out = plain(total=6)
    follower = TrainFollower(str(tmp_path), 6, shown)
    follower.poll()  # no log yet: nothing to show
    assert out.getvalue() == ""
    (tmp_path / "metrics.jsonl").write_text(report(1, 8) + report(2, 16) + report(3, 24)[:5])
    follower.poll()
    assert "train: 2/6 steps (33%)  loss 6.8  16 samples/s  ETA 0:00:02" in out.getvalue()
    assert len(lines(out)) == 2  # steps 1 and 2; step 3 is half-written
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(report(3, 24)[5:])
    follower.poll()
    assert lines(out)[-1].startswith("train: 3/6 steps (50%)  loss 6.7  16 samples/s  ETA 0:00:02")


def test_a_resumed_run_shows_its_progress_from_the_checkpoint_step(tmp_path):
    """Resumed at step 4: the restored history (steps 2 and 4) is not shown again, the display
    starts at 4, and the first new report, mostly the wait for the new SD actors, shows that
    wait (not 2 records over 16 s)."""
    shown, out = plain(total=8)
    follower = TrainFollower(str(tmp_path), 8, shown, from_step=4)
    assert lines(out) == ["train: 4/8 steps (50%)  ETA ?  [0:00:00]"]
    waited = json.dumps({"step": 6, "records": 12, "loss/total": 6.5, "time/step_s": 16.0,
                         "time/data_wait_s": 31.0, "time/first_batch_s": 31.0}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(report(2, 4) + report(4, 8) + waited)
    follower.poll()
    assert lines(out)[1:] == ["train: 6/8 steps (75%)  loss 6.5  first batches after 31 s  "
                              "ETA 0:00:01  [0:00:00]"]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(report(8, 16))
    follower.poll()
    assert lines(out)[-1] == "train: 8/8 steps (100%)  loss 6.2  4 samples/s  [0:00:00]"


def test_follow_training_polls_from_a_thread_while_the_block_runs(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    with Console("train", str(tmp_path / "logs"), stream=sys.stderr):
        with follow_training(str(tmp_path), 4, every_s=0.05):
            log.write_text(report(2, 16))
            deadline = time.monotonic() + 10
            while "2/4" not in capsys.readouterr().err and time.monotonic() < deadline:
                time.sleep(0.05)
            with open(log, "a") as f:
                f.write(report(4, 32))
    assert "train: 4/4 steps (100%)" in capsys.readouterr().err
    with follow_training(str(tmp_path), 4):  # no console: nothing followed, nothing printed
        pass
    assert capsys.readouterr().err == ""


def test_the_tune_callback_counts_finished_trials_and_pickles_without_the_display():
    from lavender_ray.tune.experiment import TrialProgress

    class Trial:
        def __init__(self, status: str) -> None:
            self.status = status

    shown, out = plain(total=3)
    callback = TrialProgress()
    TrialProgress.shown = shown
    try:
        callback.on_step_end(1, [Trial("TERMINATED"), Trial("RUNNING"), Trial("PENDING")])
        callback.on_step_end(2, [Trial("TERMINATED"), Trial("ERROR"), Trial("RUNNING")])
        restored = pickle.loads(pickle.dumps(callback))
    finally:
        TrialProgress.shown = None
    assert lines(out)[0].startswith("train: 1/3 steps (33%)  1 running")
    assert lines(out)[1].startswith("train: 2/3 steps (67%)  1 running  1 errored")
    assert "shown" not in vars(restored)


def test_what_tune_prints_goes_to_the_log_with_a_quiet_console(tmp_path, capsys):
    with Console("tune", str(tmp_path), stream=io.StringIO()) as quiet:
        with console.stdout_to_log():
            print("Configuration for experiment", end="")
            print(" search")
    assert "Configuration" not in capsys.readouterr().out
    assert "Configuration for experiment search" in Path(quiet.log.path).read_text()
    with Console("tune", str(tmp_path), verbose=True), console.stdout_to_log():
        print("shown")
    assert "shown" in capsys.readouterr().out


# ------------------------------------------------------------------------------- logging
def _terminal_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
            and not isinstance(h, logging.FileHandler)]


def test_a_quiet_console_sends_library_logs_to_the_file_and_keeps_the_projects(tmp_path, capsys):
    ray_data = logging.getLogger("ray.data.lavender_test")
    ray_data.addHandler(logging.StreamHandler(sys.stderr))
    ray_data.propagate = False
    speed = logging.getLogger("DeepSpeed_lavender_test")  # like DeepSpeed's: stdout, own level
    speed.addHandler(logging.StreamHandler(sys.stdout))
    speed.setLevel(logging.INFO)
    speed.propagate = False
    stream = io.StringIO()
    from ray.data import DataContext

    bars = DataContext.get_current().enable_progress_bars
    try:
        with Console("test", str(tmp_path / "logs"), stream=stream) as quiet:
            ray_data.warning("Ray Data says %d", 1)
            speed.info("DeepSpeed info")
            logging.getLogger("lavender_ray.train.reporting").warning("needs the user")
            logging.getLogger("lavender_ray.eval").info("project progress")
            warnings.warn_explicit("a project warning", UserWarning,
                                   f"{os.sep}x{os.sep}lavender_ray{os.sep}tune{os.sep}checks.py", 7)
            warnings.warn_explicit("a library warning", FutureWarning,
                                   f"{os.sep}site-packages{os.sep}torch{os.sep}x.py", 3)
            assert DataContext.get_current().enable_progress_bars is False
            assert not _terminal_handlers(ray_data) and not _terminal_handlers(speed)
        assert DataContext.get_current().enable_progress_bars == bars
        assert len(_terminal_handlers(ray_data)) == 1 and len(_terminal_handlers(speed)) == 1
        assert ray_data.propagate is False
        shown = stream.getvalue().splitlines()
        assert shown == ["warning: needs the user", "project progress",
                         "warning: a project warning"]
        log = Path(quiet.log.path).read_text()
        for text in ("Ray Data says 1", "DeepSpeed info", "needs the user", "a library warning",
                     "FutureWarning"):
            assert text in log
        captured = capsys.readouterr()
        assert "Ray Data says" not in captured.err + captured.out
        assert f"logs:       {quiet.log.path}" in captured.out
        assert re.fullmatch(r"test-\d{8}-\d{6}\.log", Path(quiet.log.path).name)
    finally:
        for logger in (ray_data, speed):
            logger.handlers.clear()


def test_verbose_changes_nothing(tmp_path):
    loud = logging.getLogger("ray.lavender_test_verbose")
    loud.addHandler(logging.StreamHandler(sys.stderr))
    try:
        root_before, showwarning = list(logging.getLogger().handlers), warnings.showwarning
        with Console("test", str(tmp_path / "logs"), verbose=True) as verbose:
            assert len(_terminal_handlers(loud)) == 1
            assert logging.getLogger().handlers == root_before
            assert warnings.showwarning is showwarning
            assert console.active() and not console.quiet()
            assert console.ray_init_options() == {}
        assert not verbose.log.written and not (tmp_path / "logs").exists()
    finally:
        loud.handlers.clear()


NATIVE_SCRIPT = """
import logging, os, sys
from lavender_ray.console import Console
with Console("native", sys.argv[1]) as shown:
    os.write(2, b"a line from C code\\n")  # as Ray's core worker writes, past sys.stderr
    print("python on stderr", file=sys.stderr)
    logging.getLogger("lavender_ray.x").warning("the project's warning")
    assert shown.stream is sys.stderr and sys.stderr.fileno() != 2
assert sys.stderr is sys.__stderr__ and sys.stderr.fileno() == 2
os.write(2, b"after the command\\n")
"""


def test_what_native_code_writes_to_fd_2_goes_to_the_log(tmp_path):
    """A quiet console takes fd 2 from C/C++ code (Ray's core worker, the raylet): its lines go
    to the log file; Python's stderr, the console's own output, stays on the terminal, and
    everything is put back when the command ends."""
    run = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "python on stderr" in run.stderr and "warning: the project's warning" in run.stderr
    assert "a line from C code" not in run.stderr and "after the command" in run.stderr
    [log] = tmp_path.glob("native-*.log")
    assert "a line from C code" in log.read_text()
    assert f"logs:       {log}" in run.stdout


def test_the_worker_setup_hook_only_for_a_quiet_console(tmp_path, monkeypatch):
    assert console.ray_init_options() == {}
    with Console("test", str(tmp_path)):
        hook = console.ray_init_options()["runtime_env"]["worker_process_setup_hook"]
        module, name = hook.rsplit(".", 1)  # Ray imports the hook by this dotted name
        assert getattr(importlib.import_module(module), name) is mark_worker_warnings
        # a submitted job with its own setup hook: Ray would refuse to merge a second one
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                           json.dumps({"runtime_env": {"worker_process_setup_hook": "x.y"}}))
        assert console.ray_init_options() == {}


def test_worker_lines_go_to_the_log_and_marked_warnings_once_to_the_console():
    logged, shown = [], []
    output = WorkerOutput(logged.append, shown.append)
    warning = WORKER_MARK + json.dumps({"level": "WARNING", "name": "lavender_ray.train",
                                        "message": "plain SFT"})
    batch = {"pid": 12, "actor_name": "RayTrainWorker", "ip": "10.0.0.1",
             "localhost": "10.0.0.1", "lines": ["step 3/6  loss 6.4", warning]}
    output(batch)
    output({**batch, "pid": 13})  # the same warning from another rank: shown once
    output({"pid": 14, "ip": "10.0.0.2", "localhost": "10.0.0.1",
            "lines": [WORKER_MARK + "{broken"]})
    assert logged[:2] == ["(RayTrainWorker pid=12) step 3/6  loss 6.4",
                          f"(RayTrainWorker pid=12) {warning}"]
    assert logged[-1] == f"(pid=14, ip=10.0.0.2) {WORKER_MARK}{{broken"
    assert shown == ["warning [RayTrainWorker pid=12]: plain SFT"]


def test_the_setup_hook_marks_the_projects_warnings_in_a_worker(capsys):
    package = logging.getLogger("lavender_ray")
    handlers, showwarning = list(package.handlers), warnings.showwarning
    try:
        mark_worker_warnings()
        mark_worker_warnings()  # idempotent
        logging.getLogger("lavender_ray.train.reporting").warning("matched %d words", 0)
        logging.getLogger("lavender_ray.train.reporting").info("step 3/6")
        warnings.warn_explicit("aligner", UserWarning, f"{os.sep}lavender_ray{os.sep}a.py", 1)
        marked = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith(WORKER_MARK)]
    finally:
        package.handlers[:] = handlers
        warnings.showwarning = showwarning
    shown: list[str] = []
    WorkerOutput(lambda line: None, shown.append)({"pid": 1, "lines": marked})
    assert shown == ["warning [pid=1]: matched 0 words", "warning [pid=1]: aligner"]


def test_after_ray_init_routes_forwarded_worker_output_to_the_log(tmp_path, monkeypatch):
    import ray
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    raylet: list[dict] = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, _: raylet.append(data))
    expected = {"pid": "raylet", "is_err": False, "lines": [
        "WARNING: 8 PYTHON worker processes have been started on node: 1a with address: x"]}
    killed = {"pid": "raylet", "is_err": False, "lines": ["A worker died or was killed"]}

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # stopped when the command ends

    def ray_printer(data):
        printed.append(data)

    printed: list[dict] = []
    dispatcher.add_handler("ray_print_logs", ray_printer)
    stream = io.StringIO()
    try:
        with Console("test", str(tmp_path), stream=stream) as quiet:
            console.after_ray_init()
            console.after_ray_init()  # idempotent
            dispatcher.emit({"pid": 7, "task_name": "ReadCSV", "lines": ["0.00/1.00 row/s"]})
            for data in (expected, killed):  # as Ray's error listener prints the raylet's
                ray_worker.print_to_stdstream(data, False)
        dispatcher.emit({"pid": 8, "lines": ["after the command"]})
        assert [d["pid"] for d in printed] == [8]  # Ray's printer is back afterwards
        ray_worker.print_to_stdstream(expected, False)
        assert raylet == [killed, expected]  # what needs the user, then Ray's own printer again
        log = Path(quiet.log.path).read_text()
        assert "(ReadCSV pid=7) 0.00/1.00 row/s" in log
        assert "(raylet) WARNING: 8 PYTHON worker processes" in log
        assert stream.getvalue() == ""
    finally:
        dispatcher.remove_handler("ray_print_logs")


def test_a_log_folder_on_a_uri_gets_the_file_uploaded_at_the_end(tmp_path):
    with Console("test", f"file://{tmp_path}/run/logs", stream=io.StringIO()) as quiet:
        logging.getLogger("ray.lavender_test_uri").warning("uploaded")
        assert not (tmp_path / "run").exists()  # written locally until the command ends
    assert quiet.log.path.startswith("file://")
    [log] = (tmp_path / "run" / "logs").iterdir()
    assert "uploaded" in log.read_text()


def test_a_relative_log_folder_is_named_absolute(tmp_path, monkeypatch, capsys):
    """`lavender extract --out t1` names `<cwd>/t1/logs/...`, as train names its run folder."""
    monkeypatch.chdir(tmp_path)
    with Console("test", "t1/logs", stream=io.StringIO()) as quiet:
        logging.getLogger("ray.lavender_test_relative").warning("kept")
    assert quiet.log.path.startswith(f"{tmp_path}/t1/logs/test-")
    assert f"logs:       {tmp_path}/t1/logs/test-" in capsys.readouterr().out
    assert "kept" in Path(quiet.log.path).read_text()


def test_verbose_is_a_global_and_a_per_command_flag():
    parser = build_parser()
    assert parser.parse_args(["--verbose", "train"]).verbose is True
    assert parser.parse_args(["train", "--verbose"]).verbose is True
    assert parser.parse_args(["train"]).verbose is False
    assert parser.parse_args(["data", "inspect", "--verbose"]).verbose is True
    assert parser.parse_args(["demo", "--verbose"]).verbose is True


@pytest.mark.parametrize(("command", "logs"), [
    (["train"], "<run>/logs/"), (["demo"], "<run>/logs/"), (["tune"], "<experiment>/logs/"),
    (["extract"], "<out>/logs/"), (["evaluate"], "<out>/logs/"),
    (["data", "inspect"], "<out>/logs/"),
])
def test_each_commands_verbose_help_names_the_folder_of_its_log(command, logs, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    assert f"log file under {logs}," in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------ the demo
DEMO_OVERRIDES = [
    "data.sources=[{name: synthetic, format: synthetic, num_samples: 16}]",
    "train.max_steps=6", "train.checkpoint_every=3", "train.report_every=3",
    "eval.synthetic_samples=4", "eval.probe_samples=2", "train.run_name=quiet",
]


@pytest.mark.slow  # the whole demo in its own process and local Ray (~3-5 min on 2 cores)
def test_the_demo_prints_at_most_60_lines_with_its_progress_and_summary(tmp_path):
    args = [arg for override in DEMO_OVERRIDES for arg in ("--set", override)]
    output = run_lavender(tmp_path, "demo", *args, timeout_s=560)
    printed = output.splitlines()
    assert len(printed) <= 60, output
    assert [line for line in printed if line != line.rstrip()] == []  # no trailing blanks
    run = tmp_path / "outputs" / "quiet"
    assert "== lavender demo: done ==" in output and "final metrics: loss/total=" in output
    assert re.search(r"^train: 6/6 steps \(100%\)  loss [\d.]+", output, re.M), output
    assert re.search(r"^evaluate \(base, adapter\): 4 rows", output, re.M), output
    assert len(re.findall(r"^ *adapter: ", output, re.M)) == 1, output  # listed once, not again
    assert "Token authentication" not in output and "row/s" not in output
    assert "(RayTrainWorker pid=" not in output and "deepspeed_shm_comm_op" not in output
    [log] = (run / "logs").glob("demo-*.log")
    assert f"logs:       {log}" in output
    text = log.read_text()
    assert "Started a local Ray instance" in text and "(RayTrainWorker pid=" in text
    assert "step 6/6" in text  # rank 0's progress lines are kept in the log


def test_short_warnings_print_the_projects_warnings_as_one_line():
    # `lavender export` has no log file: its own warnings read like a command's, not like
    # Python's file:line + source line; a library's warning goes where Python shows it
    out, passed_on = io.StringIO(), []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest, **kw: passed_on.append(str(message))
        with console.short_warnings(out):
            warnings.warn_explicit("load it with X", UserWarning, "/x/lavender_ray/export/b.py", 5)
            warnings.warn_explicit("deprecated thing", FutureWarning, "/x/transformers/y.py", 7)
    assert out.getvalue() == "warning: load it with X\n" and passed_on == ["deprecated thing"]


# ------------------------------------------------------------------------------- failures
WORKER_ERROR = """Training failed due to worker errors:
[Rank 0,1 Error Snippet]:
Traceback (most recent call last):
  File "/x/lavender_ray/vlm/loading.py", line 61, in load_model_and_processor
    raise ValueError(
ValueError: Unrecognized processing class in /data/pics.

"""


def test_a_failure_is_one_line_naming_the_exception_and_where_or_which_ranks():
    class WorkerGroupError(RuntimeError):
        pass

    try:
        raise KeyError("vlm")
    except KeyError as err:
        here = console.failure_line(err)
    assert re.fullmatch(r"KeyError: 'vlm' \(at .*test_console\.py:\d+\)", here), here
    assert console.failure_line(WorkerGroupError(WORKER_ERROR)) == (
        "WorkerGroupError on rank 0,1: ValueError: Unrecognized processing class in /data/pics.")
    assert console.failure_line(RuntimeError()) == "RuntimeError: (no message)"


@pytest.mark.parametrize("verbose", [False, True])
def test_a_command_that_fails_prints_one_line_and_logs_the_traceback(verbose, tmp_path,
                                                                     monkeypatch, capsys):
    """Quiet: the traceback of an error the command did not expect goes to the log, the
    console gets one line naming it and the log (exit code 1); `--verbose`: Python's own."""
    from lavender_ray import cli
    from lavender_ray.commands import extract

    def failing(args):
        with Console("extract", str(tmp_path / "logs"), args.verbose):
            raise RuntimeError("the SD actors died\nsee above")

    monkeypatch.setattr(extract, "run", failing)
    argv = ["extract", "--out", str(tmp_path / "t"), *(["--verbose"] if verbose else [])]
    if verbose:
        with pytest.raises(RuntimeError, match="the SD actors died"):
            cli.main(argv)
        return
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    [log] = (tmp_path / "logs").iterdir()
    assert re.fullmatch(r"lavender extract: failed: RuntimeError: see above \(at .*test_console"
                        r"\.py:\d+\)", err[-2]), err
    assert err[-1] == f"  the whole traceback is in {log} (--verbose prints it here)"
    assert "Traceback (most recent call last)" in log.read_text()
    assert 'raise RuntimeError("the SD actors died' in log.read_text()
