"""`lavender export` on tiny runs trained by `fit_local` and laid out like the trainer's run
folder: the merged model gives the PeftModel's logits without PEFT, the processor loads, the card
names the data and the metrics, every input form is found, and bad inputs are one-line refusals."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoProcessor

from lavender_ray.cli import main
from lavender_ray.config import CONFIG_FILE, ConfigError, LavenderConfig, load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.eval.attention import batch_image, synthetic_probe_records
from lavender_ray.rejects import write_rejects
from lavender_ray.runs import (
    ADAPTER_DIR,
    EXPORT_DIR,
    METRICS_FILE,
    checkpoint_name,
    load_trained,
    save_trained,
)
from lavender_ray.runs.locate import locate
from lavender_ray.schema import Reject, parse_messages
from lavender_ray.train.local import fit_local
from lavender_ray.vlm.registry import adapter_class

FAMILIES = ["mllama", "qwen2_vl"]  # users serve Mllama merged; Qwen2-VL: self-attention
STEPS = 3
EVAL_TABLE = "| synthetic | multiple_choice (%, max 100.0) | 6 | 16.67 | 33.33 | +16.67 |"


def run_config(family: str, *overrides: str) -> LavenderConfig:
    return load_config("demo", [
        f"vlm.family={family}", f"vlm.model_id=tiny/{family}", "loss.word_source=label",
        "lora.dropout=0.0", "train.run_name=tiny-export", *overrides,
    ])  # fmt: skip


def make_run(run_dir: Path, family: str) -> Path:
    """A run folder as the trainer leaves it: config, rejects, metrics, adapter, evaluation."""
    cfg = run_config(family)
    records = synthetic_probe_records(run_config(family, "data.seed=1"), 2)
    fit = fit_local(cfg, records, steps=STEPS)
    save_trained(run_dir / ADAPTER_DIR, fit.adapter, fit.aligner, cfg)
    cfg.save(run_dir)
    history = [{**m, "step": i + 1, "records": 2.0 * (i + 1), "train/epoch": i // 2 + 1}
               for i, m in enumerate(fit.history)]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in history))
    rejects = [Reject(f"r{i}", "synthetic", "read", "undecodable_image", "bad bytes")
               for i in range(3)]  # fmt: skip
    write_rejects(rejects, str(run_dir / "rejects"), "read")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.md").write_text(
        "# Evaluation\n\n## Benchmarks\n\n| benchmark | metric | rows | base | adapter | change |"
        f"\n|---|---|---:|---:|---:|---:|\n{EVAL_TABLE}\n"
    )
    return run_dir


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, run folder, export folder) of `lavender export RUN --out DIR --merge`."""
    root = tmp_path_factory.mktemp(request.param)
    run_dir = make_run(root / "run", request.param)
    out = root / "export"
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()) as err:
        warnings.simplefilter("always")
        assert main(["export", str(run_dir), "--out", str(out), "--merge"]) == 0
    # tiny Qwen2-VL: its image-only processor class is unknown to AutoProcessor, and that is said
    # in one line (no file:line, no source line)
    said = [line for line in err.getvalue().splitlines() if "AutoProcessor.from_pretrained" in line]
    assert len(said) == (request.param == "qwen2_vl"), said
    assert all(line.startswith("warning: AutoProcessor.from_pretrained(") for line in said), said
    return request.param, run_dir, out


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_merged_model_gives_the_peft_models_logits_without_peft(exported) -> None:
    family, run_dir, out = exported
    _, adapter, _ = load_trained(run_dir / ADAPTER_DIR)
    assert isinstance(adapter.model, PeftModel)
    record = make_synthetic_records(1, seed=5)[0]
    built = adapter.build_inputs([batch_image(record)], [parse_messages(record["messages"])])
    inputs = adapter.model_inputs(built)
    expected = logits(adapter.model, inputs)

    merged = adapter_class(family).model_class.from_pretrained(out / "merged")
    assert not isinstance(merged, PeftModel)
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]
    assert "lavender" not in (out / "merged" / "config.json").read_text()  # plain attention
    torch.testing.assert_close(logits(merged, inputs), expected)  # fp32 tolerances
    _, reloaded, _ = load_trained(out)  # the export's vlm/ is a saved run's
    torch.testing.assert_close(logits(reloaded.model, inputs), expected)


def test_processor_is_saved_with_the_export(exported) -> None:
    family, run_dir, out = exported
    _, adapter, _ = load_trained(run_dir / ADAPTER_DIR)
    trained = adapter.processor
    for folder in (out, out / "merged"):
        loaded = type(trained).from_pretrained(folder)
        assert loaded.chat_template == trained.chat_template
        text = "A red circle to the left of a blue square."
        assert loaded.tokenizer(text)["input_ids"] == trained.tokenizer(text)["input_ids"]
    if family == "mllama":
        assert type(AutoProcessor.from_pretrained(out)) is type(trained)


def test_model_card_names_the_data_metrics_and_evaluation(exported) -> None:
    family, run_dir, out = exported
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == f"tiny/{family}"
    assert meta["library_name"] == "peft"
    assert {"lavender", "vision-language", family} <= set(meta["tags"])
    assert "license" not in meta
    assert "[More Information Needed]" not in card
    final = json.loads((run_dir / METRICS_FILE).read_text().splitlines()[-1])
    assert "| synthetic | synthetic | generated |" in body
    assert "| 3 |" in body and "read/undecodable_image" in body  # rejects per source and reason
    assert f"Records trained on: {2 * STEPS}." in body
    assert "| loss/att |" in body and f"{final['loss/att']:.4g} |" in body
    assert "| lambda | 10 |" in body and "| word matching | exact" in body
    assert "| steps | 3, in 2 pass(es) over the data (of train.max_steps=30) |" in body
    assert "StepLR gamma 0.85 every 30 steps (train.epochs=1)" in body  # not per data pass
    assert EVAL_TABLE in body and "### Benchmarks" in body
    assert "PeftModel.from_pretrained(base, path, subfolder='vlm')" in body
    assert "subfolder='merged'" in body
    assert "arXiv" in body and "2502.06814" in body and "Diffusion Instruction Tuning" in body


def test_every_input_form_is_found(tmp_path: Path) -> None:
    """A run folder without adapter/ falls back to its latest checkpoint's export; a checkpoint
    and a saved run are taken as they are, with the run folder around them found."""
    source = make_run(tmp_path / "src", "qwen2_vl")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(source / CONFIG_FILE, run_dir / CONFIG_FILE)
    for step in (2, STEPS):
        shutil.copytree(source / ADAPTER_DIR, run_dir / checkpoint_name(step) / EXPORT_DIR)
    latest = run_dir / checkpoint_name(STEPS)
    shutil.copy(source / METRICS_FILE, latest / METRICS_FILE)

    found = locate(run_dir)
    assert found.saved_run == latest / EXPORT_DIR and "latest checkpoint" in found.how
    assert found.metrics_file() == latest / METRICS_FILE
    assert locate(latest).saved_run == latest / EXPORT_DIR
    assert locate(latest).run_dir == run_dir
    saved = locate(source / ADAPTER_DIR)
    assert saved.saved_run == source / ADAPTER_DIR and saved.run_dir == source


def test_a_checkpoint_exports_without_merging(tmp_path: Path, capsys) -> None:
    source = make_run(tmp_path / "run", "mllama")
    checkpoint = source / checkpoint_name(STEPS)
    shutil.copytree(source / ADAPTER_DIR, checkpoint / EXPORT_DIR)
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert f"checkpoint {checkpoint}: its export/" in console
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "aligner.safetensors", "chat_template.jinja", "config.yaml",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json", "vlm",
    ]  # fmt: skip
    assert "lavender export <run> --out DIR --merge" in (out / "README.md").read_text()


def refusal_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after `export`, a part of the one-line message)."""
    (tmp / "empty").mkdir()
    (tmp / "no_checkpoint").mkdir()
    run_config("mllama").save(tmp / "no_checkpoint")
    (tmp / "a_file").write_text("x")
    out = str(tmp / "out")
    return {
        "missing": ([str(tmp / "nope"), "--out", out], "does not exist"),
        "empty folder": ([str(tmp / "empty"), "--out", out], "is none of"),
        "run without a checkpoint": ([str(tmp / "no_checkpoint"), "--out", out],
                                     "without a checkpoint yet"),
        "input is a file": ([str(tmp / "a_file"), "--out", out], "is a file"),
        "URI": (["s3://bucket/runs/x", "--out", out], "copy the run"),
        "bad repo id": ([str(tmp / "nope"), "--out", out, "--push-to-hub", "a b"],
                        "not a Hub repo id"),
    }  # fmt: skip


def test_bad_inputs_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    for name, (args, words) in refusal_cases(tmp_path).items():
        assert main(["export", *args]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("lavender export: ") and err.count("\n") == 1, (name, err)
        assert words in err, (name, err)
    assert not (tmp_path / "out").exists()  # nothing written before the refusal


def test_out_folder_is_a_file_or_not_empty(tmp_path: Path) -> None:
    from lavender_ray.export.bundle import check_out_dir

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "a_file")
    with pytest.raises(ConfigError, match="holds files already"):
        check_out_dir(tmp_path / "full")
    assert check_out_dir(tmp_path / "new").is_dir()


def test_merged_check_refuses_bad_weights(tmp_path: Path) -> None:
    from lavender_ray.export.merged import verify_merged

    good = {"a.weight": torch.ones(2, 2), "b.bias": torch.zeros(2)}
    save_file(good, tmp_path / "model.safetensors")
    assert verify_merged(tmp_path, expected=2).values == 6
    with pytest.raises(RuntimeError, match="holds 2 tensors, the base model 3"):
        verify_merged(tmp_path, expected=3)
    for bad in ({"a.weight": torch.tensor([float("nan")])}, {"q.lora_A.weight": torch.ones(1)},
                {"a.weight": torch.ones(0)}):
        save_file(bad, tmp_path / "model.safetensors")
        with pytest.raises(RuntimeError, match="empty or non-finite"):
            verify_merged(tmp_path, expected=1)


def test_push_to_hub_offline_fails_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    run_dir = make_run(tmp_path / "run", "mllama")
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out), "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--push-to-hub me/tiny: upload failed" in err
    assert "OfflineModeIsEnabled" in err and f"hf upload me/tiny {out}" in err
    assert (out / "README.md").is_file()  # the export itself is complete


@pytest.mark.slow  # a fresh CLI process importing the whole stack (~14 s)
def test_export_merge_prints_no_deepspeed_line_on_a_cpu_machine(tmp_path: Path) -> None:
    """`save_pretrained` imports DeepSpeed through accelerate; a user's CPU machine without
    DS_ACCELERATOR set must not see DeepSpeed's "no GPU found" warning (a fresh process: the
    warning comes once, at DeepSpeed's first import)."""
    run_dir = make_run(tmp_path / "run", "mllama")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run(
        [sys.executable, "-m", "lavender_ray.cli", "export", str(run_dir), "--out",
         str(tmp_path / "out"), "--merge"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged/   the full model" in done.stdout
    assert "accelerator" not in done.stdout + done.stderr, done.stderr
