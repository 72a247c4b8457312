"""`lavender evaluate` on the synthetic benchmark with the tiny Mllama and an adapter trained by
`fit_local`; the synthetic benchmark's formats; prompts; greedy batch decoding; base vs adapter."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lavender_ray.cli import main
from lavender_ray.config import ConfigError, LavenderConfig, load_config
from lavender_ray.eval.attention import synthetic_probe_records
from lavender_ray.eval.evaluate import MODELS, EvalReport, describe
from lavender_ray.eval.generation import computing, generate_answers, load_model
from lavender_ray.eval.inference import build_prompt
from lavender_ray.eval.metrics import METRICS
from lavender_ray.eval.models import ADAPTER, BASE
from lavender_ray.eval.probes import stored_probe_records
from lavender_ray.eval.report import markdown_report, results_dict
from lavender_ray.eval.scoring import score_benchmark
from lavender_ray.eval.synthetic_bench import (
    synthetic_benchmark_rows,
    write_jsonl,
    write_synthetic_benchmark,
)
from lavender_ray.runs import save_trained
from lavender_ray.train.local import fit_local

EVAL_SETTINGS = ["eval.batch_size=4", "eval.max_new_tokens=3", "eval.synthetic_samples=6",
                 "eval.probe_samples=2", "eval.num_cpus=0.5"]  # fmt: skip


def run_config(*overrides: str) -> LavenderConfig:
    return load_config("demo", ["loss.word_source=label", "lora.dropout=0.0", *overrides])


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run saved by `save_trained` after 4 `fit_local` steps (records: another seed than the
    probe set)."""
    cfg = run_config()
    records = synthetic_probe_records(run_config("data.seed=1"), 2)
    fit = fit_local(cfg, records, steps=4)
    run_dir = tmp_path_factory.mktemp("run")
    cfg.save(run_dir)  # <run>/config.yaml + <run>/adapter/: a run folder, as the trainer leaves it
    return save_trained(run_dir / "adapter", fit.adapter, fit.aligner, cfg)


def test_cpu_probe_targets_of_an_fp16_run_are_extracted_in_fp32() -> None:
    """A run trained with fp16 SD (V100 preset) probed on CPU: fp16 has no CPU kernels worth
    the name and gives NaN inversion there, so the probe targets are the fp32 ones."""
    fp16 = synthetic_probe_records(run_config("sd.dtype=fp16"), 1, device="cpu")[0]
    fp32 = synthetic_probe_records(run_config("sd.dtype=fp32"), 1, device="cpu")[0]
    assert fp16["sd_maps"] == fp32["sd_maps"]


# ----------------------------------------------------------------------------------- prompts
def test_prompts_follow_vlmevalkit() -> None:
    options = {"A": "red", "B": "blue"}
    assert build_prompt("What color?", options, "Two shapes.", "short") == (
        "Hint: Two shapes.\nQuestion: What color?\nOptions:\nA. red\nB. blue\n"
        "Please select the correct answer from the options above."
    )
    assert build_prompt("What shape?", {}, None, "short") == (
        "What shape?\nAnswer the question using a single word or phrase."
    )
    assert build_prompt("Is there a dog?", {}, None, "yes_no") == (
        "Is there a dog? Please answer yes or no."
    )
    asked = "Is there a dog? Please answer yes or no."
    assert build_prompt(asked, {}, None, "yes_no") == asked  # not asked twice


# ------------------------------------------------------------------------ synthetic benchmark
def test_synthetic_benchmark_reads_back_in_every_format(ray_local, tmp_path: Path) -> None:
    """The files read back to the generated rows: TSV and JSONL through `read_benchmark` on Ray,
    Parquet through the same row converter on the pyarrow table (Ray's Parquet datasource costs
    ~20 s per read on 2 busy cores; it hands the converter the same rows)."""
    import pyarrow.parquet as pq

    from lavender_ray.data.benchmarks import benchmark_row
    from lavender_ray.pipeline.benchmarks import read_benchmark
    from lavender_ray.storage import read_file

    expected = synthetic_benchmark_rows(6, seed=3)
    assert [json.loads(r["options"]) == {} for r in expected] == [False, True, False] * 2
    assert json.loads(expected[2]["extras"])["hint"]  # position questions carry a hint
    files = write_synthetic_benchmark(tmp_path, 6, seed=3)
    assert sorted(files) == ["jsonl", "parquet", "tsv"]
    rejects = str(tmp_path / "rejects")
    datasets = [read_benchmark(str(files[fmt]), fmt, rejects) for fmt in ("tsv", "jsonl")]
    rows = datasets[0].union(datasets[1]).take_all()  # each row once per format
    by_id = lambda r: int(r["id"])  # noqa: E731
    assert sorted(rows, key=by_id) == sorted(expected * 2, key=by_id)
    assert not (tmp_path / "rejects").exists()
    parquet = [benchmark_row(raw, refs={}, image_root=None, read_bytes=read_file)
               for raw in pq.read_table(files["parquet"]).to_pylist()]
    assert parquet == expected


# ----------------------------------------------------------------------------- the models
def test_batched_greedy_decoding_matches_one_by_one(trained_dir: Path) -> None:
    _, adapter, _ = load_model(ADAPTER, str(trained_dir), "cpu")
    rows = synthetic_benchmark_rows(3, seed=5)
    images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    prompts = [build_prompt(r["question"], json.loads(r["options"]), None, "short") for r in rows]
    batched = generate_answers(adapter, images, prompts, max_new_tokens=4)
    single = [generate_answers(adapter, [image], [prompt], max_new_tokens=4)[0]
              for image, prompt in zip(images, prompts)]
    assert batched == single
    assert len({len(p) for p in prompts}) > 1  # prompts of different lengths: padding is exercised


def test_base_is_the_trained_run_without_its_lora(trained_dir: Path) -> None:
    """The base model (fresh build, LoRA off) equals the trained run with its LoRA switched off,
    and differs from the trained run (the LoRA was trained)."""
    _, trained, _ = load_model(ADAPTER, str(trained_dir), "cpu")
    _, base, _ = load_model(BASE, str(trained_dir), "cpu")
    record = synthetic_probe_records(run_config(), 1)[0]
    image = Image.open(io.BytesIO(record["image"])).convert("RGB")
    conversation = [{"role": "user", "content": "Describe the image."},
                    {"role": "assistant", "content": record["target_text"]}]
    inputs = trained.model_inputs(trained.build_inputs([image], [conversation]))
    with torch.no_grad():
        with_lora = trained.model(**inputs).logits
        with computing(trained, BASE):
            trained_off = trained.model(**inputs).logits
        with computing(base, BASE):
            fresh_base = base.model(**inputs).logits
    torch.testing.assert_close(trained_off, fresh_base)
    assert not torch.allclose(with_lora, fresh_base)


# ---------------------------------------------------------------------------- end to end
def broken_benchmark(path: Path) -> tuple[Path, int]:
    """Synthetic rows + three malformed ones: an undecodable image (caught by inference), no
    answer (caught by the reader), an answer letter that is not an option (caught by scoring)."""
    rows = synthetic_benchmark_rows(3, seed=11)
    write_jsonl(rows, path)
    good_image = base64.b64encode(rows[0]["image"]).decode()
    bad = [
        {"index": "bad-image", "image": base64.b64encode(b"not an image, " * 8).decode(),
         "question": "What color?", "answers": ["red"]},
        {"index": "no-answer", "image": good_image, "question": "What color?"},
        {"index": "bad-letter", "image": good_image, "question": "What color?",
         "options": {"A": "red", "B": "blue"}, "answers": ["Z"]},
    ]  # fmt: skip
    with path.open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in bad)
    return path, len(rows)


@pytest.mark.slow  # a full evaluation: two actor pools and the probe task
def test_lavender_evaluate_end_to_end(ray_local, trained_dir: Path, tmp_path: Path, capsys,
                                     monkeypatch) -> None:
    bench, good_rows = broken_benchmark(tmp_path / "broken.jsonl")
    out = tmp_path / "report"
    monkeypatch.chdir(tmp_path)  # `--out report`, relative, as a user types it
    code = main([
        "evaluate", "--preset", "demo", "--adapter", str(trained_dir.parent),  # the run folder
        "--bench", "synthetic,broken",
        "--out", "report", "--set", f"eval.benchmarks={{broken: {bench}}}",
        "--set", "eval.metrics={broken: multiple_choice}", *(f"--set={o}" for o in EVAL_SETTINGS),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"adapter:     run folder {trained_dir.parent}: its adapter/" in printed
    assert f"report:      {out}/results.md" in printed and f"logs:       {out}/logs/" in printed
    results = json.loads((out / "results.json").read_text())

    # benchmark table: both models on every benchmark, numbers in range, malformed rows left out
    assert results["benchmarks"]["synthetic"]["rows"] == 6
    assert results["benchmarks"]["broken"]["rows"] == good_rows
    for bench_result in results["benchmarks"].values():
        assert bench_result["metric"] == "multiple_choice"
        assert set(bench_result["results"]) == {"base", "adapter"}
        for model in bench_result["results"].values():
            assert 0.0 <= model["score"] <= model["max_score"] == 100.0
            assert model["n"] == bench_result["rows"]
            assert all(0.0 <= v <= 100.0 for v in model["details"].values())
    markdown = (out / "results.md").read_text()
    assert "| benchmark | metric | rows | base | adapter | change |" in markdown
    assert "| synthetic | multiple_choice (%" in markdown and "| broken |" in markdown

    # malformed rows: reported with id, stage and reason, never scored
    rejects = {r["id"]: (r["source"], r["stage"], r["reason"]) for r in results["rejects"]}
    assert rejects == {
        "bad-image": ("broken", "benchmark", "corrupt_image"),
        "no-answer": ("broken", "benchmark", "missing_answer"),
        "bad-letter": ("broken", "score", "unscorable"),
    }
    assert all(f"| {rid} | broken |" in markdown for rid in rejects)

    # per-row predictions of both models
    lines = [json.loads(x) for x in (out / "predictions" / "broken.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2"]
    assert all(isinstance(x[m]["answer"], str) and x[m]["score"] in (0.0, 1.0)
               for x in lines for m in ("base", "adapter"))

    # attention alignment before (base) vs after (adapter), raw and aligned
    attention = results["attention"]
    assert attention["probe_samples"] == 2 and attention["words"] > 0
    assert set(attention["maps"]) == {"VLM base", "VLM adapter", "aligned base", "aligned adapter"}
    for values in attention["maps"].values():
        assert 0.0 <= values["mse"] <= 1.0 and 0.0 <= values["iou_top10"] <= 1.0
        assert values["pearson"] is None or -1.0 <= values["pearson"] <= 1.0
    base, adapter = attention["maps"]["VLM base"], attention["maps"]["VLM adapter"]
    assert not all(math.isclose(base[k], adapter[k]) for k in ("mse", "iou_top10"))  # LoRA moved it
    pngs = sorted((out / "probes").glob("*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as grid:
        assert grid.width > 5 * 160  # image + SD + 4 model panels


def test_report_of_a_benchmark_without_scorable_rows() -> None:
    scores = score_benchmark(METRICS["pope"], [], MODELS)
    results = results_dict(Path("run"), run_config(), {"POPE": "pope.tsv"}, {"POPE": scores},
                           {}, 0, 0, [])
    assert results["benchmarks"]["POPE"] == {"metric": "pope", "path": "pope.tsv", "rows": 0,
                                             "results": {}}
    assert "| POPE | pope | 0 | n/a | n/a | no row could be scored |" in markdown_report(results)


def test_unknown_benchmark_fails_before_running(trained_dir: Path, tmp_path: Path, capsys) -> None:
    # --adapter: the saved run, its run folder or a checkpoint of it (what `lavender export` takes)
    checkpoint = trained_dir.parent / "checkpoint_step0000004"
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / "export").mkdir(exist_ok=True)
    for part in ("vlm", "aligner.safetensors", "config.yaml"):
        target = checkpoint / "export" / part
        if not target.exists():
            target.symlink_to(trained_dir / part)
    for adapter in (trained_dir, trained_dir.parent, checkpoint):
        code = main(["evaluate", "--adapter", str(adapter), "--bench", "nope", "--out",
                     str(tmp_path / "out")])
        assert code == 2
        assert "'nope' is not a key of eval.benchmarks" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    started = tmp_path / "started"  # a run folder before its first checkpoint
    started.mkdir()
    (started / "config.yaml").write_text((trained_dir / "config.yaml").read_text())
    assert main(["evaluate", "--adapter", str(started), "--bench", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "--adapter" in err and "without a checkpoint yet: no saved run in it" in err


def test_probe_records_come_from_an_extract_folder_or_are_refused_in_one_line(tmp_path):
    """`eval.probe_path` may name what `lavender extract --out` wrote: its targets are read,
    not its rejects or logs; a folder without SD targets is one line."""

    out = tmp_path / "extracted"
    (out / "targets" / "abc123").mkdir(parents=True)
    (out / "rejects" / "r1").mkdir(parents=True)
    (out / "logs").mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "sd_maps": [b"x", b"y", b"z"]}),
                   out / "targets" / "abc123" / "0.parquet")
    pq.write_table(pa.table({"id": ["bad"], "reason": ["corrupt_image"]}),
                   out / "rejects" / "r1" / "0.parquet")
    (out / "logs" / "extract.log").write_text("not parquet")
    assert [r["id"] for r in stored_probe_records(str(out), 2)] == ["a", "b"]
    assert len(stored_probe_records(str(out / "targets" / "abc123"), 5)) == 3
    with pytest.raises(ConfigError, match=r"eval.probe_path=.*rejects.*holds no records with SD"):
        stored_probe_records(str(out / "rejects"), 2)
    with pytest.raises(ConfigError, match="holds no records"):
        stored_probe_records(str(tmp_path / "nowhere"), 2)


def test_the_summary_names_each_benchmarks_unit(tmp_path: Path) -> None:
    def scored(unit: str, base: float, adapter: float) -> dict:
        return {"base": {"score": base, "unit": unit}, "adapter": {"score": adapter, "unit": unit}}

    results = {"benchmarks": {
        "MYBENCH": {"metric": "multiple_choice", "rows": 6, "results": scored("%", 0.0, 50.0)},
        "OCRBench": {"metric": "ocrbench", "rows": 9, "results": scored("hits", 3.0, 4.0)},
        "POPE": {"metric": "pope", "rows": 0, "results": {}},
    }, "attention": {"probe_source": "synthetic"}}
    report = EvalReport(tmp_path, tmp_path / "results.md", tmp_path / "results.json", [], results,
                        f"saved run {tmp_path}")
    printed = describe(report)
    assert "MYBENCH              multiple_choice (%, 6 rows): base=0.00  adapter=50.0" in printed
    assert "OCRBench             ocrbench (hits, 9 rows): base=3  adapter=4" in printed
    assert "POPE                 pope (0 rows): " in printed


def test_without_a_preset_the_run_is_evaluated_with_its_own_config(trained_dir: Path, tmp_path,
                                                                    capsys) -> None:
    saved = tmp_path / "saved"  # the run, trained with a benchmark of its own in its eval section
    saved.mkdir()
    for part in ("vlm", "aligner.safetensors"):
        (saved / part).symlink_to(trained_dir / part)
    run_config("eval.benchmarks={MINE: /data/mine.tsv}",
               "eval.metrics={MINE: multiple_choice}").save(saved)
    assert main(["evaluate", "--adapter", str(saved), "--bench", "nope"]) == 2
    assert "not a key of eval.benchmarks (MINE)" in capsys.readouterr().err
    assert main(["evaluate", "--preset", "demo", "--adapter", str(saved), "--bench", "nope"]) == 2
    assert "not a key of eval.benchmarks (none configured)" in capsys.readouterr().err
