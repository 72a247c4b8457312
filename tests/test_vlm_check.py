"""The VLM check stage: every record the trainer would fail on, or train with no answer, is
rejected with its reason before training; good records pass unchanged; `vlm.overlong=
truncate_question` makes an overlong record trainable. Tiny real models on CPU."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_sd_stage import OVERRIDES as SD_OVERRIDES

from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.images import decode_image
from lavender_ray.pipeline.dataset import build_train_dataset
from lavender_ray.pipeline.vlm_check import VLMCheckStage
from lavender_ray.rejects import count_rejects, read_rejects
from lavender_ray.schema import RECORD_SCHEMA, TARGET_SCHEMA, parse_messages
from lavender_ray.sd.target import SDTarget
from lavender_ray.train.step import collate_records
from lavender_ray.vlm import build_adapter, registered_families
from lavender_ray.vlm.chat import IGNORE_INDEX

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

MAX_LENGTH = 128  # the demo's vlm.max_length
LONG_QUESTION = "What is the red circle next to the blue square? " * 20  # ~200 tokens
# a template that renders no assistant text: the answer has no token to learn
NO_ANSWER_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{%- if message['role'] != 'assistant' %}"
    "{{- message['role'] + ': ' }}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- else %}{{- part['text'] }}{%- endif %}{%- endfor %}{{- '\n' }}"
    "{%- endif %}{%- endfor %}"
)


def family_config(family: str, *overrides: str):
    return load_config(
        "demo", [f"vlm.family={family}", f"vlm.model_id=tiny/{family}", *overrides]
    )


def good_records(n: int = 3) -> list[dict]:
    return make_synthetic_records(n, seed=0, image_size=48)


def with_messages(record: dict, record_id: str, turns: list[dict[str, str]]) -> dict:
    return dict(record, id=record_id, messages=json.dumps(turns))


def bad_records(base: dict, image_token: str = "<image>") -> tuple[list[dict], dict[str, str]]:
    """One record per reason this stage gives, and the expected reason of each id."""
    answer = {"role": "assistant", "content": "A red circle."}
    question = {"role": "user", "content": "What is in the image?"}
    cases = {
        "starts_with_answer": ([answer, question, answer], "bad_conversation"),
        "no_user_turn": ([{"role": "system", "content": "Be brief."}, answer],
                         "bad_conversation"),
        "long_system_prompt": ([{"role": "system", "content": "blue square " * 150},
                                question, answer], "image_cut"),
        "long_question": ([{"role": "user", "content": LONG_QUESTION}, answer],
                          "answer_truncated"),
        "spells_image_token": ([{"role": "user", "content": f"Is {image_token} red?"}, answer],
                               "bad_conversation"),
    }
    records = [with_messages(base, name, turns) for name, (turns, _) in cases.items()]
    records.append(dict(base, id="not_json", messages="[{"))
    records.append(dict(base, id="corrupt_image", image=b"not an image" * 8))
    expected = {name: reason for name, (_, reason) in cases.items()}
    expected |= {"not_json": "bad_conversation", "corrupt_image": "corrupt_image"}
    return records, expected


def run_stage(stage: VLMCheckStage, records: list[dict], schema=RECORD_SCHEMA):
    out = stage(pa.Table.from_pylist(records, schema=schema)).to_pylist()
    rejects = {r["id"]: r for r in read_rejects(stage.rejects_dir).to_pylist()}
    return out, rejects


@pytest.mark.parametrize("family", registered_families())
def test_each_bad_case_is_rejected_with_its_reason_and_good_rows_pass_unchanged(
    family, tmp_path
):
    cfg = family_config(family)
    stage = VLMCheckStage(cfg.to_dict(), str(tmp_path / "rejects"))
    good = good_records()
    inputs = stage.vlm_inputs
    image_token = inputs.tokenizer.convert_ids_to_tokens(inputs.image_token_id)
    bad, expected = bad_records(good[0], image_token)
    out, rejects = run_stage(stage, good + bad)
    assert out == good  # unchanged, in order
    assert {rid: r["reason"] for rid, r in rejects.items()} == expected
    assert all(r["stage"] == "vlm" and r["detail"] for r in rejects.values())
    assert "IndexError" in rejects["starts_with_answer"]["detail"]  # the template's own error
    assert "image token" in rejects["spells_image_token"]["detail"]
    truncated = rejects["long_question"]["detail"]
    assert f"vlm.max_length={MAX_LENGTH}" in truncated and "answer tokens" in truncated
    # what passed, the trainer's collate takes, one by one and as one batch
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    targets = target_rows(len(out), cfg.sd.output_size)
    batch = collate_records([r | t for r, t in zip(out, targets)], adapter, cfg.sd.output_size)
    assert (batch.inputs["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).min() > 0


def target_rows(n: int, size: int, words: tuple[str, ...] = ("red", "circle")) -> list[dict]:
    maps = np.random.default_rng(0).random((len(words), size, size), dtype=np.float32)
    target = SDTarget(list(words), [(-1, -1)] * len(words), maps, 0, "test")
    return [target.to_row() for _ in range(n)]


def test_no_answer_tokens_and_a_processor_that_refuses_the_image(tmp_path):
    cfg = family_config("mllama")
    stage = VLMCheckStage(cfg.to_dict(), str(tmp_path / "rejects"))
    stage.vlm_inputs.processor.chat_template = NO_ANSWER_TEMPLATE
    out, rejects = run_stage(stage, good_records(1))
    assert out == [] and rejects["synthetic-0-00000"]["reason"] == "no_answer_tokens"

    stage = VLMCheckStage(cfg.to_dict(), str(tmp_path / "rejects2"))
    stage.vlm_inputs.processor.image_processor.do_resize = False  # Mllama's refuses every image
    out, rejects = run_stage(stage, good_records(1))
    reject = rejects["synthetic-0-00000"]
    assert out == [] and reject["reason"] == "image_unusable"
    assert "do_resize" in reject["detail"]


def test_records_with_targets_that_do_not_fit_are_rejected(tmp_path):
    cfg = family_config("mllama")  # sd.output_size = 32
    stage = VLMCheckStage(cfg.to_dict(), str(tmp_path / "rejects"))
    good = good_records(3)
    rows = [r | t for r, t in zip(good, target_rows(3, 32))]
    rows[1] |= target_rows(1, 16)[0]  # extracted at another sd.output_size
    rows[2] |= {"sd_words": ["red"]}  # two maps for one word
    out, rejects = run_stage(stage, rows, schema=TARGET_SCHEMA)
    assert [r["id"] for r in out] == [good[0]["id"]]
    assert {r["reason"] for r in rejects.values()} == {"bad_targets"}
    assert "sd_map_size=16" in rejects[good[1]["id"]]["detail"]
    assert "1 sd_words but 2 maps" in rejects[good[2]["id"]]["detail"]


@pytest.mark.parametrize("family", registered_families())
def test_truncate_question_makes_an_overlong_record_trainable(family, tmp_path):
    base = good_records(1)[0]
    answer = "The red circle is to the left of the blue square."
    overlong = with_messages(base, "overlong", [
        {"role": "user", "content": LONG_QUESTION},
        {"role": "assistant", "content": answer},
    ])
    too_long_answer = with_messages(base, "too_long_answer", [
        {"role": "user", "content": "Describe the image."},
        {"role": "assistant", "content": answer * 12},
    ])
    cfg = family_config(family, "vlm.overlong=truncate_question")
    stage = VLMCheckStage(cfg.to_dict(), str(tmp_path / "rejects"))
    out, rejects = run_stage(stage, [overlong, too_long_answer])
    assert [r["id"] for r in out] == ["overlong"]
    assert rejects["too_long_answer"]["reason"] == "answer_truncated"
    assert "even with the question cut" in rejects["too_long_answer"]["detail"]
    turns = parse_messages(out[0]["messages"])
    question = turns[0]["content"]
    assert 0 < len(question) < len(LONG_QUESTION) and LONG_QUESTION.startswith(question)
    assert turns[1]["content"] == answer and out[0]["image"] == base["image"]
    # the trainer gets the whole answer, within vlm.max_length, and a finite LM loss
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    image = decode_image(out[0]["image"], cfg.data.max_image_pixels)
    inputs = adapter.build_inputs([image], [turns])
    assert inputs["input_ids"].shape[1] <= MAX_LENGTH
    labels = inputs["labels"][0]
    learned = adapter.tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True)
    assert learned.strip() == answer
    with torch.no_grad():
        assert torch.isfinite(adapter.forward(inputs).lm_loss)


@pytest.mark.slow  # runs the SD actor pool
def test_stream_mode_checks_every_record_before_the_sd_stage(ray_local, tmp_path):
    good = good_records(6)
    bad, _ = bad_records(good[0])
    # what the read stage passes and the check rejects, and one the read stage rejects
    kept = ("long_system_prompt", "long_question", "corrupt_image")
    records = good + [r for r in bad if r["id"] in kept]
    path = tmp_path / "records.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), path)
    cfg = load_config("demo", {
        **SD_OVERRIDES,
        "data.max_text_chars": 2000,
        "data.sources": [{"name": "r", "format": "records", "path": str(path)}],
    })
    rejects_dir = str(tmp_path / "rejects")
    dataset = build_train_dataset(cfg, rejects_dir)
    plan = repr(dataset)  # the last stage first: SD runs on what the check passed
    assert plan.index("SDTargetStage") < plan.index("VLMCheckStage") < plan.index("to_records")
    rows = dataset.take_all()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in good)
    assert count_rejects(rejects_dir) == {
        "vlm/image_cut": 1, "vlm/answer_truncated": 1, "read/corrupt_image": 1,
    }
    assert len(rows) + sum(count_rejects(rejects_dir).values()) == len(records)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    collate_records(rows, adapter, cfg.sd.output_size)  # never raises on what the stage passed
