"""A user's first hour, as the README tells it, on their own files and two cores.

A folder with images of twelve aspect ratios (some in a sub-folder, PNG and JPEG), a messages
JSONL and a LLaVA JSON that refer to them by relative paths (one to a missing file, one to a
broken image), a VLMEvalKit TSV and a preset extending `demo`. From that folder, each as its own
`lavender` process pinned to two cores (`taskset`) so every command starts the local Ray a
2-core machine gets: `data inspect`, `train`, `extract`, `evaluate` without `--bench` (its probes
from the extracted targets), a two-trial `tune`.
Each must finish, name its rejects and write what it says it wrote."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from commands import run_lavender
from PIL import Image, ImageDraw

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


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    write_user_folder(root)
    return root


@pytest.mark.slow  # five lavender commands, each with its own local Ray (~4-7 min on 2 cores)
@pytest.mark.timeout(1200)
def test_a_user_folder_inspects_trains_evaluates_and_tunes_on_two_cores(user_folder):
    root = user_folder
    inspect = run_lavender(root, "data", "inspect", "--preset", "mine.yaml")
    assert "rejects: 2" in inspect
    assert "mine/m-missing" in inspect and "llava/l-broken" in inspect
    sheet = root / "outputs" / "data_inspect" / "contact_sheet.png"
    assert Image.open(sheet).width > 0

    train = run_lavender(root, "train", "--preset", "mine.yaml", "--set", "train.run_name=first")
    adapter = root / "outputs" / "first" / "adapter"
    assert f"adapter:    {adapter}" in train
    assert {"aligner.safetensors", "config.yaml"} <= {p.name for p in adapter.iterdir()}
    assert "rejects: 2" in train and "step=4" in train

    extract = run_lavender(root, "extract", "--preset", "mine.yaml", "--out", "targets")
    assert "11 written, 0 already cached" in extract and "rejects: 2" in extract
    assert list((root / "targets").rglob("*.parquet"))

    evaluate = run_lavender(root, "evaluate", "--preset", "mine.yaml", "--adapter", str(adapter),
                        "--out", "eval", "--set", f"eval.probe_path={root / 'targets'}")
    assert "MYBENCH" in evaluate and "multiple_choice (6 rows)" in evaluate
    results = json.loads((root / "eval" / "results.json").read_text())
    assert "MYBENCH" in json.dumps(results)
    assert len(list((root / "eval" / "probes").glob("*.png"))) == 2

    tune = run_lavender(root, "tune", "--preset", "mine.yaml", "--set", "tune.num_samples=2",
                    "--set", "train.run_name=search",
                    "--set", 'tune.search_space={"optim.lr": "loguniform(1e-4, 1e-2)"}')
    ended = re.search(r"experiment: .*\(2 of 2 trials: ([^)]*)\)", tune)
    assert ended and "error" not in ended.group(1), tune[-3000:]
    assert (root / "outputs" / "search" / "best.yaml").exists()
