"""A user's first hour, as the README tells it, on their own files and two cores.

A folder with images of twelve aspect ratios (some in a sub-folder, PNG and JPEG), a messages
JSONL and a LLaVA JSON that refer to them by relative paths (one to a missing file, one to a
broken image), a VLMEvalKit TSV and a preset extending `demo`. From that folder, each as its own
`lavender` process pinned to two cores (`taskset`) so every command starts the local Ray a
2-core machine gets: `data inspect`, `train` stopped by Ctrl-C and resumed from its last
checkpoint, `extract`, `evaluate` without `--bench` (its probes from the extracted targets), and
a `tune` over three trials that ASHA prunes, Ctrl-C interrupts, two mistaken reruns are refused
and `--resume` completes.
Each must finish, name its rejects and write what it says it wrote."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest
from commands import interrupt_when, run_lavender
from PIL import Image, ImageDraw

from lavender_ray.config import load_config

SHAPES = [(320, 240), (240, 320), (400, 200), (200, 400), (512, 128), (300, 300), (640, 480),
          (160, 640), (333, 250), (250, 333), (500, 375), (375, 500)]
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60),
           "yellow": (235, 200, 30)}
PRESET = """extends: demo
data:
  sources:
    - {name: mine, format: messages, path: train.jsonl}
    - {name: llava, format: llava, path: llava.json}
train:
  max_steps: 4
  checkpoint_every: 2
  report_every: 2
eval:
  benchmarks: {MYBENCH: bench.tsv}
  metrics: {MYBENCH: multiple_choice}
  probe_samples: 2
"""


def write_user_folder(root: Path) -> None:
    """Images, train.jsonl (8 rows, 1 missing image), llava.json (5 rows, 1 broken image),
    bench.tsv (6 questions, images inline) and mine.yaml."""
    (root / "images" / "sub").mkdir(parents=True)
    names, captions = [], []
    for i, (w, h) in enumerate(SHAPES):
        first, second = sorted(COLOURS)[i % 4], sorted(COLOURS)[(i + 1) % 4]
        image = Image.new("RGB", (w, h), (200, 200, 200))
        draw = ImageDraw.Draw(image)
        draw.ellipse([w * 0.1, h * 0.3, w * 0.4, h * 0.7], fill=COLOURS[first])
        draw.rectangle([w * 0.6, h * 0.3, w * 0.9, h * 0.7], fill=COLOURS[second])
        name = f"images/{'sub/' if i % 3 == 0 else ''}img{i}.{'jpg' if i % 2 else 'png'}"
        image.save(root / name)
        names.append(name)
        captions.append(f"A {first} circle to the left of a {second} square.")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [{"id": f"m{i}", "images": [names[i]], "messages": [
        {"role": "user", "content": "<image>Describe the image."},
        {"role": "assistant", "content": captions[i]}]} for i in range(7)]
    rows.append({**rows[0], "id": "m-missing", "images": ["images/nowhere.png"]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    llava = [{"id": f"l{i}", "image": names[i], "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"},
        {"from": "gpt", "value": captions[i]}]} for i in range(7, 11)]
    llava.append({**llava[0], "id": "l-broken", "image": "images/broken.png"})
    (root / "llava.json").write_text(json.dumps(llava))
    lines = ["index\timage\tquestion\tA\tB\tC\tD\tanswer\tcategory"]
    for i in range(6):
        buffer = io.BytesIO()
        Image.open(root / names[i]).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        lines.append(f"{i}\t{image}\tWhat shape is on the left?\tcircle\tsquare\tstar\ttriangle\t"
                     "A\tshapes")
    (root / "bench.tsv").write_text("\n".join(lines) + "\n")
    (root / "mine.yaml").write_text(PRESET)


# A 3-point grid run one trial at a time on one worker: lambda=1000's alignment term dwarfs the
# others' total at the first rung (step 2), so ASHA stops it there.
SEARCH = ("--preset", "mine.yaml", "--set", "train.run_name=search",
          "--set", "train.num_workers=1", "--set", "loss.word_source=label",
          "--set", 'tune.search_space={"loss.lambda": "grid([0, 1000, 0.001])"}',
          "--set", "tune.num_samples=1", "--set", "tune.metric=loss/total",
          "--set", "tune.grace_period=1", "--set", "tune.max_concurrent_trials=1")


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    write_user_folder(root)
    return root


@pytest.mark.slow  # lavender commands, each with its own local Ray (~9-10 min on 2 cores)
@pytest.mark.timeout(1200)
def test_a_user_folder_inspects_trains_evaluates_and_tunes_on_two_cores(user_folder):
    root = user_folder
    inspect = run_lavender(root, "data", "inspect", "--preset", "mine.yaml")
    assert "rejects: 2" in inspect
    assert "mine/m-missing" in inspect and "llava/l-broken" in inspect
    sheet = root / "outputs" / "data_inspect" / "contact_sheet.png"
    assert Image.open(sheet).width > 0

    # train: Ctrl-C once checkpoint 4 is being written (step 6 then waits ~20 s for the second
    # epoch's SD targets: pipeline.replay_mb=0, no replay of the first epoch from memory), then
    # --resume goes on from the newest complete checkpoint to step 8
    run = root / "outputs" / "first"
    steps = ("--set", "train.max_steps=8")
    stopped = interrupt_when(root, run / "checkpoint_step0000004", "train", "--preset",
                             "mine.yaml", "--set", "train.run_name=first", *steps,
                             "--set", "pipeline.replay_mb=0", exit_code=130)
    resume = (f"`lavender train --resume --set train.storage_path={root / 'outputs'} --set "
              "train.run_name=first`")
    point = re.search(r"run 'first' stopped; its last checkpoint is \S+(\d) \(step \d of 8\)\. "
                      r"Continue it with (.*)$", stopped, re.M)
    assert point and point.group(2) == resume, stopped[-3000:]
    train = run_lavender(root, "train", "--resume", "--set", "train.run_name=first")
    assert f"resuming run first: its last checkpoint is {run}/checkpoint_step000000" in train
    assert re.search(rf"^train: {point.group(1)}/8 steps", train, re.M), train
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [2, 4, 6, 8]
    assert history[-1]["train/resumed_from"] == int(point.group(1))  # not from scratch
    # the resumed run began a new pass over the data (Ray Data streams have no position)
    at_checkpoint = next(r for r in history if r["step"] == int(point.group(1)))
    assert history[-1]["train/epoch"] == at_checkpoint["train/epoch"] + 1
    adapter = run / "adapter"
    assert f"adapter:    {adapter}" in train
    assert {"aligner.safetensors", "config.yaml"} <= {p.name for p in adapter.iterdir()}
    assert "rejects: 2" in train and "step=8" in train  # 2 epochs, each record counted once

    extract = run_lavender(root, "extract", "--preset", "mine.yaml", "--out", "targets")
    assert "11 written, 0 already cached" in extract and "rejects: 2" in extract
    assert list((root / "targets").rglob("*.parquet"))

    evaluate = run_lavender(root, "evaluate", "--preset", "mine.yaml", "--adapter", str(adapter),
                        "--out", "eval", "--set", f"eval.probe_path={root / 'targets'}")
    assert "MYBENCH" in evaluate and "multiple_choice (%, 6 rows)" in evaluate
    results = json.loads((root / "eval" / "results.json").read_text())
    assert "MYBENCH" in json.dumps(results)
    assert len(list((root / "eval" / "probes").glob("*.png"))) == 2

    # tune: Ctrl-C once trial_002 starts, two refusals, --resume runs trial_002 to the end
    search = root / "outputs" / "search"
    interrupted = interrupt_when(root, search / "runs" / "trial_002", "tune", *SEARCH)
    first = trials(search)
    assert {n: r["status"] for n, r in first.items()} == {
        "trial_000": "completed", "trial_001": "stopped early", "trial_002": "unfinished"}
    assert "--resume" in interrupted
    stopped = first["trial_001"]  # ASHA: lambda=1000's loss/total is worse at the first rung
    assert (stopped["loss.lambda"], stopped["step"]) == ("1000", "2")
    assert float(stopped["loss/total"]) > float(first["trial_000"]["loss/total"])
    ended = {n: (search / n / "result.json").read_text() for n in ("trial_000", "trial_001")}

    fresh = run_lavender(root, "tune", *SEARCH, exit_code=2, timeout_s=120)
    assert "a Tune experiment exists" in fresh and "--resume" in fresh
    changed = run_lavender(root, "tune", "--resume", *SEARCH, "--set", "optim.lr=0.5",
                           exit_code=2, timeout_s=120)
    assert "optim.lr: 0.001 -> 0.5" in changed

    resumed = run_lavender(root, "tune", "--resume", *SEARCH)
    assert re.search(r"experiment: .*\(3 of 3 trials", resumed), resumed[-3000:]
    second = trials(search)
    assert {n: r["status"] for n, r in second.items()} == {
        "trial_000": "completed", "trial_001": "stopped early", "trial_002": "completed"}
    assert {n: (search / n / "result.json").read_text() for n in ended} == ended  # not rerun
    [best] = [n for n, r in second.items() if r["best"] == "true"]
    assert best in ("trial_000", "trial_002")
    assert second[best]["checkpoint"].endswith("checkpoint_step0000004")
    assert f"**{best}**" in (search / "trials.md").read_text()
    preset = load_config(str(search / "best.yaml"))
    assert preset.loss.lambda_ == float(second[best]["loss.lambda"])
    assert preset.train.run_name.startswith("run-") and preset.pipeline.mode == "stream"


def trials(experiment: Path) -> dict[str, dict[str, str]]:
    """The rows of `<experiment>/trials.csv` by trial name."""
    with open(experiment / "trials.csv") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}
