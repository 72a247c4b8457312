"""The one contract every VLM family adapter meets, run on each tiny family (real classes,
random seeded weights, CPU)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from peft import PeftModel
from PIL import Image
from test_vlm_geometry import cell_box

from lavender_ray.config import ConfigError, load_config
from lavender_ray.vlm import (
    VLMAdapter,
    build_adapter,
    load_adapter,
    registered_families,
    save_adapter,
)
from lavender_ray.vlm.chat import IGNORE_INDEX
from lavender_ray.vlm.mllama.adapter import MllamaAdapter
from lavender_ray.vlm.mllama.tiny import tiny_mllama
from lavender_ray.vlm.registry import adapter_class, build_tiny

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAMILIES = registered_families()  # every test below runs on each registered family
MAP_SIZE = 32
CONVERSATIONS = [
    [
        {"role": "user", "content": "Describe the image in a single sentence as a caption."},
        {"role": "assistant", "content": "A red circle to the left of a blue square."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What color is the square?"},
        {"role": "assistant", "content": "The square is blue."},
        {"role": "user", "content": "And the circle?"},
        {"role": "assistant", "content": "It is red."},
    ],
]


def make_config(family: str, *overrides: str):
    return load_config("demo", [f"vlm.family={family}", f"vlm.model_id=tiny/{family}", *overrides])


def make_adapter(family: str, *overrides: str):
    cfg = make_config(family, *overrides)
    return build_adapter(cfg.vlm, cfg.lora, map_size=MAP_SIZE)


def images() -> list[Image.Image]:
    """A wide image (two Mllama tiles, a 3x4 Qwen2-VL grid) and a square one."""
    wide = Image.new("RGB", (112, 84), (230, 230, 230))
    wide.paste((220, 40, 40), (10, 20, 50, 60))
    square = Image.new("RGB", (56, 56), (40, 70, 220))
    return [wide, square]


def model_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if k != "labels"}


def captured_q_lora_b(adapter, layer: int) -> torch.Tensor:
    module = adapter.attention_modules(adapter.base_model)[layer]
    return module.q_proj.lora_B["default"].weight


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


# --------------------------------------------------------------------------------- parity
def test_capture_leaves_logits_unchanged(family):
    adapter = make_adapter(family)
    assert isinstance(adapter, VLMAdapter) and adapter.family == family
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    plain, _ = build_tiny(f"tiny/{family}", seed=0)  # same weights, stock SDPA attention
    with torch.no_grad():
        captured = adapter.forward(inputs)
        every_row = adapter.forward(inputs, rows="all")
        reference = plain(**adapter.model_inputs(inputs))
    answer = (inputs["labels"][:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten().tolist()
    assert captured.captured.rows == answer and 0 < len(answer) < inputs["labels"].shape[1]
    shape = (2, adapter.num_layers, adapter.num_heads, len(answer), MAP_SIZE, MAP_SIZE)
    assert captured.attention.shape == shape
    assert every_row.attention.shape[3] == inputs["input_ids"].shape[1]
    torch.testing.assert_close(captured.attention, every_row.attention[:, :, :, answer])
    for out in (captured, every_row):  # the layers' outputs are SDPA's whatever is recorded
        torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=0)
        torch.testing.assert_close(out.lm_loss, reference.loss, rtol=0, atol=0)


def test_only_captured_layers_leave_sdpa(family):
    adapter = make_adapter(family, f"vlm.attention_layers=[{1 if family != 'mllama' else 3}]")
    config = adapter.base_model.config
    assert config.get_text_config()._attn_implementation == "lavender_capture"
    assert config.vision_config._attn_implementation == "sdpa"
    watched = [m for m in adapter.base_model.modules() if hasattr(m, "lavender_recorder")]
    assert watched == [adapter.attention_modules(adapter.base_model)[adapter.layers[0]]]


def test_forward_without_image_is_refused():
    adapter = make_adapter("mllama")
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    text_only = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels")}
    with pytest.raises(RuntimeError, match=r"no attention recorded for layers \[1, 3\]"):
        adapter.forward(text_only)


# ------------------------------------------------------------------------------- gradients
def test_attention_loss_reaches_lora_of_captured_layers(family):
    adapter = make_adapter(family)
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    out = adapter.forward(inputs)
    target = torch.rand(out.attention.shape, generator=torch.Generator().manual_seed(0))
    torch.nn.functional.mse_loss(out.attention, target).backward()
    for layer in adapter.layers:
        grad = captured_q_lora_b(adapter, layer).grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient into layer {layer} q_proj"


def test_word_maps_equal_the_mean_of_the_laid_out_rows(family):
    """Pooling a word's rows before the layout (training's path) gives the maps of laying out
    every row and averaging them, and its gradient reaches the captured layers' LoRA."""
    adapter = make_adapter(family)
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    with torch.no_grad():
        every_row = adapter.forward(inputs, rows="all").attention  # [b, L, H, T, s, s]
    out = adapter.forward(inputs)  # answer rows only
    rows, length = out.captured.rows, inputs["input_ids"].shape[1]
    words = [[rows[0]], [rows[-1], rows[1], rows[1]], [rows[2], rows[-2]]]  # a repeat counts twice
    pooled = out.captured.word_maps(1, words)  # [n, L, H, s, s]
    assert pooled.shape == (3, adapter.num_layers, adapter.num_heads, MAP_SIZE, MAP_SIZE)
    for word, maps in zip(words, pooled):
        expected = every_row[1][:, :, word].mean(dim=2)  # [L, H, rows, s, s] -> [L, H, s, s]
        torch.testing.assert_close(maps.detach(), expected.float(), rtol=1e-5, atol=1e-6)
    pooled.square().sum().backward()
    for layer in adapter.layers:
        assert captured_q_lora_b(adapter, layer).grad.abs().sum() > 0
    assert out.captured.word_maps(0, []).shape == (0, *pooled.shape[1:])
    with pytest.raises(ValueError, match=rf"positions in 0..{length - 1}"):
        out.captured.word_maps(0, [[length]])
    with pytest.raises(ValueError, match="non-empty groups"):
        out.captured.word_maps(0, [[rows[0]], []])
    with pytest.raises(ValueError, match=r"rows \[0\] were not captured"):
        out.captured.word_maps(0, [[0]])  # row 0 predicts a prompt token
    with pytest.raises(ValueError, match="rows='some' is not one of"):
        adapter.forward(inputs, rows="some")  # type: ignore[arg-type]


def test_selected_layer_only_and_checkpointing_records_once(family):
    """One selected layer; with activation checkpointing the maps and gradients are the same as
    without (a recomputed layer does not record again)."""
    last = max(adapter_class(family).attention_modules(build_tiny(f"tiny/{family}")[0]))
    results = []
    for checkpointing in (False, True):
        adapter = make_adapter(
            family,
            f"vlm.attention_layers=[{last}]",
            f"vlm.gradient_checkpointing={checkpointing}",
            "lora.dropout=0",
        )
        adapter.model.train()
        inputs = adapter.build_inputs(images(), CONVERSATIONS)
        out = adapter.forward(inputs)
        assert adapter.layers == [last] and out.attention.shape[1] == 1
        out.attention.square().sum().backward()
        results.append((out.attention.detach(), captured_q_lora_b(adapter, last).grad))
    (maps, grad), (maps_ckpt, grad_ckpt) = results
    torch.testing.assert_close(maps_ckpt, maps)
    torch.testing.assert_close(grad_ckpt, grad)
    assert grad.abs().sum() > 0


def test_second_forward_returns_only_its_own_maps(family):
    adapter = make_adapter(family)
    both = adapter.build_inputs(images(), CONVERSATIONS)
    single = adapter.build_inputs(images()[1:], CONVERSATIONS[1:])
    with torch.no_grad():
        first = adapter.forward(both, rows="all")
        second = adapter.forward(single, rows="all")
    assert first.attention.shape[0] == 2 and second.attention.shape[0] == 1
    row = single["input_ids"].shape[1]
    alone, batched = second.attention[0, ..., :row, :, :], first.attention[1, ..., :row, :, :]
    torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- label masking
def labelled_runs(kept: torch.Tensor) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions of one row."""
    runs: list[list[int]] = []
    for position in kept.nonzero().flatten().tolist():
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


def test_only_assistant_tokens_are_labelled(family):
    adapter = make_adapter(family)
    adapter.tokenizer.padding_side = "left"  # released tokenizers often pad left
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
    assert (mask[:, 1:] <= mask[:, :-1]).all(), "the batch is not right-padded"
    assert not mask.all(), "the test batch should contain padding"
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept]), "a label differs from its input token"
    assert not kept[mask == 0].any(), "padding is labelled"
    assert not kept[ids == adapter.image_token_id].any(), "an image token is labelled"
    tokenizer = adapter.tokenizer
    for row, conversation in enumerate(CONVERSATIONS):
        answers = [t["content"] for t in conversation if t["role"] == "assistant"]
        runs = labelled_runs(kept[row])
        decoded = [tokenizer.decode(ids[row][r], skip_special_tokens=True).strip() for r in runs]
        assert decoded == answers
        ends = [tokenizer.convert_ids_to_tokens(int(t)) for t in ids[row][kept[row]]]
        assert tokenizer.eos_token in ends, "the end-of-turn token is not learned"
        prompt = tokenizer.decode(ids[row][~kept[row] & (mask[row] == 1)], skip_special_tokens=True)
        for turn in conversation:
            if turn["role"] != "assistant":
                assert turn["content"] in prompt


def test_inputs_accept_image_bytes_and_truncate_safely(family):
    adapter = make_adapter(family)
    encoded = []
    for image in images():
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        encoded.append(buf.getvalue())
    full = adapter.build_inputs(encoded, CONVERSATIONS)
    last_image = int((full["input_ids"] == adapter.image_token_id).nonzero()[:, 1].max())
    adapter.max_length = last_image + 3
    cut = adapter.build_inputs(encoded, CONVERSATIONS)
    for key in adapter.sequence_keys:
        assert torch.equal(cut[key], full[key][:, : last_image + 3])
    adapter.max_length = last_image
    with pytest.raises(ValueError, match="cuts into the image tokens"):
        adapter.build_inputs(encoded, CONVERSATIONS)


# --------------------------------------------------------------------------------- geometry
# Registration of every family in the frame, at real image geometry: tests/test_frame.py.
def test_mllama_geometry_at_llama32_tile_size():
    """560 px tiles of 14 px patches: 4 x (1 + 40*40) keys, read from the config, not assumed."""
    model, processor = tiny_mllama(seed=0, tile_size=560)
    adapter = MllamaAdapter(model, processor)
    inputs = adapter.build_inputs([Image.new("RGB", (1120, 560))], CONVERSATIONS[:1])
    with torch.no_grad(), adapter.recorder.recording() as records:
        adapter.model(**adapter.model_inputs(inputs), use_cache=False)
    assert adapter.patches_per_side == 40
    assert records[1].shape[-1] == 4 * (1 + 40 * 40)
    probs = torch.zeros(1, 1, 1, 4 * 1601)  # [b, H, T, K]
    probs[..., 1 * 1601 + 1 + 10 * 40 + 39] = 1.0  # tile 1 (right), patch row 10, column 39
    maps = adapter.sample_maps(probs[0], inputs, 0, MAP_SIZE)[0, 0]
    r0, r1, c0, c1 = cell_box(10, 79, 40, 80, MAP_SIZE)
    peak_r, peak_c = divmod(int(maps.argmax()), MAP_SIZE)
    assert r0 <= peak_r < r1 and c0 <= peak_c < c1


# ------------------------------------------------------------------------------ save / load
def test_lora_round_trip_gives_identical_outputs(family, tmp_path):
    cfg = make_config(family)
    adapter = build_adapter(cfg.vlm, cfg.lora, map_size=MAP_SIZE)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in adapter.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    save_adapter(adapter, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "lavender_vlm.json").read_text())["family"] == family
    loaded = load_adapter(cfg.vlm, cfg.lora, tmp_path, map_size=MAP_SIZE)
    assert isinstance(loaded.model, PeftModel)
    fresh = build_adapter(cfg.vlm, cfg.lora, map_size=MAP_SIZE)
    with torch.no_grad():
        saved, restored, untrained = (a.forward(inputs) for a in (adapter, loaded, fresh))
    torch.testing.assert_close(restored.logits, saved.logits, rtol=0, atol=0)
    torch.testing.assert_close(restored.attention, saved.attention, rtol=0, atol=0)
    assert not torch.allclose(untrained.logits, saved.logits), "the LoRA weights changed nothing"
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_full_finetuning_round_trip(tmp_path):
    cfg = make_config("mllama", "lora.mode=full")
    adapter = build_adapter(cfg.vlm, cfg.lora, map_size=MAP_SIZE)
    assert all(p.requires_grad for p in adapter.model.parameters())
    with torch.no_grad():
        adapter.attention_modules(adapter.model)[1].q_proj.weight.mul_(3.0)
    inputs = adapter.build_inputs(images(), CONVERSATIONS)
    save_adapter(adapter, tmp_path)
    loaded = load_adapter(cfg.vlm, cfg.lora, tmp_path, map_size=MAP_SIZE)
    save_adapter(loaded, tmp_path / "again")  # a loaded checkpoint saves under the same id
    reloaded = load_adapter(cfg.vlm, cfg.lora, tmp_path / "again", map_size=MAP_SIZE)
    with torch.no_grad():
        expected = adapter.forward(inputs).logits
        for restored in (loaded, reloaded):
            torch.testing.assert_close(restored.forward(inputs).logits, expected, rtol=0, atol=0)
    lora_cfg = make_config("mllama")
    with pytest.raises(ValueError, match="mode: saved 'full', config 'lora'"):
        load_adapter(lora_cfg.vlm, lora_cfg.lora, tmp_path)


@pytest.mark.filterwarnings("ignore:AutoProcessor returned")
def test_real_loading_path_from_a_local_checkpoint(family, tmp_path):
    """Any id but tiny/* goes through from_pretrained (here: a local directory)."""
    model, processor = build_tiny(f"tiny/{family}", seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    local = make_adapter(family, f"vlm.model_id={tmp_path}", "vlm.dtype=auto")
    tiny = make_adapter(family)
    inputs = local.build_inputs(images(), CONVERSATIONS)
    expected = tiny.build_inputs(images(), CONVERSATIONS)
    assert inputs.keys() == expected.keys()
    assert all(torch.equal(inputs[k], expected[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(local.forward(inputs).logits, tiny.forward(inputs).logits)


@pytest.mark.filterwarnings("ignore:AutoProcessor returned")
def test_inputs_build_without_the_weights_as_the_adapter_builds_them(family, tmp_path):
    """`build_vlm_inputs` (the pipeline's check stage): a checkpoint's processor and config, the
    layers on the meta device; its weights are never read, the inputs are the adapter's."""
    model, processor = build_tiny(f"tiny/{family}", seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    expected = make_adapter(family).build_inputs(images(), CONVERSATIONS)
    for model_id in (str(tmp_path), f"tiny/{family}"):
        cfg = make_config(family, f"vlm.model_id={model_id}", "vlm.dtype=auto")
        vlm_inputs = adapter_class(family).build_vlm_inputs(cfg.vlm)
        built = vlm_inputs.build_inputs(images(), CONVERSATIONS)
        assert built.keys() == expected.keys()
        assert all(torch.equal(built[k], expected[k]) for k in built)


# ------------------------------------------------------------------- registry, config, tiny
def test_registry_names_the_registered_families():
    assert set(registered_families()) >= {"mllama", "llava", "qwen2_vl"}
    for family in registered_families():
        assert adapter_class(family).family == family
    listed = ", ".join(registered_families())
    with pytest.raises(ValueError, match=f"registered families: {listed}"):
        adapter_class("minicpm_v")
    with pytest.raises(ConfigError, match=f"vlm.family='minicpm_v'.*registered families: {listed}"):
        load_config("demo", ["vlm.family=minicpm_v"])


def test_bad_layer_selection_is_refused():
    with pytest.raises(ValueError, match=r"allowed: \[1, 3\]"):
        make_adapter("mllama", "vlm.attention_layers=[0, 1]")


def test_a_tiny_id_of_another_family_is_refused_when_the_config_loads(tmp_path):
    # a preset extending `demo` (tiny/mllama) that changes only the family: refused as the
    # config loads, before Ray or a worker starts, naming the family's own tiny model
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: demo\nvlm: {family: llava}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(str(mine))
    assert str(refused.value).splitlines()[1:] == [
        "  vlm: vlm.model_id='tiny/mllama' does not match vlm.family='llava'; the tiny model of "
        "this family is 'tiny/llava' (a family and its model change together: --set "
        "vlm.model_id=tiny/llava)"]
    assert load_config(str(mine), ["vlm.model_id=tiny/llava"]).vlm.model_id == "tiny/llava"
    assert load_config(str(mine), ["vlm.model_id=org/llava-1.5"]).vlm.family == "llava"


def test_lora_targets_that_match_nothing_are_refused():
    with pytest.raises(ValueError, match="lora.target_modules"):
        make_adapter("mllama", "lora.target_modules=[no_such_proj]")


def test_tiny_models_are_seeded(family):
    model_a, processor_a = build_tiny(f"tiny/{family}", seed=0)
    model_b, processor_b = build_tiny(f"tiny/{family}", seed=0)
    model_c, _ = build_tiny(f"tiny/{family}", seed=1)
    state_a, state_b, state_c = (m.state_dict() for m in (model_a, model_b, model_c))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert processor_a.tokenizer.get_vocab() == processor_b.tokenizer.get_vocab()
