"""The Aligner: every variant/norm/activation/reduction, the authors' layouts and parameter
counts, the two word-pooling orders, gradients, save/load."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lavender_ray.align import Aligner, build_aligner, load_aligner, save_aligner
from lavender_ray.align.aligner import (
    METADATA_KEY,
    FP32BatchNorm2d,
    FP32Conv2d,
    FP32GroupNorm,
)
from lavender_ray.config import AlignerConfig
from lavender_ray.loss import attention_loss
from lavender_ray.tensors import minmax_normalise
from lavender_ray.train.step import aligned_word_maps
from lavender_ray.vlm.base import CapturedAttention

VARIANTS = ("light", "sim", "deep")
NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("relu6", "leaky_relu")
REDUCTIONS = ("aligner_then_mean", "mean_then_aligner")


def _maps(n: int = 3, layers: int = 2, heads: int = 4, side: int = 8, seed: int = 0):
    """Attention-like input [n, L, H, s, s]: softmax over the s*s image positions."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, layers, heads, side * side, generator=generator)
    return logits.softmax(-1).view(n, layers, heads, side, side)  # [.., s*s] -> [.., s, s]


@pytest.mark.parametrize(
    "variant,norm,activation,reduction",
    list(itertools.product(VARIANTS, NORMS, ACTIVATIONS, REDUCTIONS)),
)
def test_every_configuration_builds_and_maps_to_unit_range(variant, norm, activation, reduction):
    cfg = AlignerConfig(
        variant=variant, norm=norm, activation=activation, hidden_dim=8, layer_reduction=reduction
    )
    torch.manual_seed(0)
    out = build_aligner(cfg, num_heads=4)(_maps())
    assert out.shape == (3, 8, 8)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    flat = out.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(3))
    assert (flat.max(1).values > 0.99).all()  # 1 up to the 1e-8 guard of a small range


@pytest.mark.parametrize("variant,convs3x3", [("light", 2), ("sim", 3), ("deep", 5)])
def test_variant_depths_and_channels(variant, convs3x3):
    aligner = Aligner(6, AlignerConfig(variant=variant, hidden_dim=32))
    convs = [m for m in aligner.net if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * convs3x3 + [(1, 1)]
    assert convs[0].in_channels == 6 and convs[0].out_channels == 32
    assert convs[-2].out_channels == 6 and convs[-1].out_channels == 1
    assert all(c.bias is None for c in convs[:-1]) and convs[-1].bias is not None
    assert all(c.padding == (1, 1) for c in convs[:-1])
    default = [type(m) for m in Aligner(6).net]
    assert default[:3] == [FP32Conv2d, FP32GroupNorm, nn.ReLU6]  # instance norm, see below


def _layers(aligner: Aligner) -> list[str]:
    """The network as words: 'conv3 4->16', 'norm 16' (with the norm's class), 'act'."""
    names = []
    for m in aligner.net:
        if isinstance(m, nn.Conv2d):
            names.append(f"conv{m.kernel_size[0]} {m.in_channels}->{m.out_channels}")
        elif isinstance(m, (nn.ReLU6, nn.LeakyReLU)):
            names.append("act")
        elif isinstance(m, nn.Identity):
            names.append("norm -")
        else:
            names.append(f"norm {m.num_features if hasattr(m, 'num_features') else m.num_channels}")
    return names


# H = 4 heads, d = 16: the authors' layouts (diffag_xattn_manager.py), Norm after every 3x3
# conv but the 3rd and 4th of `deep`
AUTHORS_LAYOUTS = {
    "light": "conv3 4->16,norm 16,act,conv3 16->4,norm 4,act,conv1 4->1",
    "sim": "conv3 4->16,norm 16,act,conv3 16->16,norm 16,act,conv3 16->4,norm 4,act,conv1 4->1",
    "deep": "conv3 4->16,norm 16,act,conv3 16->16,norm 16,act,conv3 16->16,act,conv3 16->16,act,"
    "conv3 16->4,norm 4,act,conv1 4->1",
}
NORM_CLASSES = {
    "instance": FP32GroupNorm, "batch": FP32BatchNorm2d, "group": FP32GroupNorm,
    "none": nn.Identity,
}  # fmt: skip
# 3x3 weights: 4*16*9 = 576, 16*16*9 = 2304, 16*4*9 = 576; last conv 4 + 1 bias = 5
CONV_PARAMS = {
    "light": 576 + 576 + 5, "sim": 576 + 2304 + 576 + 5, "deep": 576 + 3 * 2304 + 576 + 5
}  # fmt: skip
# affine norms (batch, group): weight + bias per channel: light 2*(16+4), sim/deep 2*(16+16+4)
NORM_PARAMS = {"light": 40, "sim": 72, "deep": 72}


@pytest.mark.parametrize("variant,norm", list(itertools.product(VARIANTS, NORMS)))
def test_layer_layout_and_parameter_count_are_the_authors(variant, norm):
    aligner = Aligner(4, AlignerConfig(variant=variant, norm=norm, hidden_dim=16))
    names = _layers(aligner)
    expected = AUTHORS_LAYOUTS[variant]
    if norm == "none":
        expected = ",".join("norm -" if n.startswith("norm") else n for n in expected.split(","))
    assert ",".join(names) == expected
    norms = [m for m in aligner.net if not isinstance(m, (nn.Conv2d, nn.ReLU6))]
    assert norms and all(type(m) is NORM_CLASSES[norm] for m in norms)
    affine = NORM_PARAMS[variant] if norm in ("batch", "group") else 0
    assert sum(p.numel() for p in aligner.parameters()) == CONV_PARAMS[variant] + affine
    assert (CONV_PARAMS["light"], CONV_PARAMS["sim"], CONV_PARAMS["deep"]) == (1157, 3461, 8069)


@pytest.mark.parametrize("variant", VARIANTS)
def test_group_norm_has_one_affine_group_per_channel_everywhere(variant):
    aligner = Aligner(6, AlignerConfig(variant=variant, norm="group", hidden_dim=12))
    norms = [m for m in aligner.net if isinstance(m, nn.GroupNorm)]
    assert len(norms) == (2 if variant == "light" else 3)
    for norm in norms:
        assert norm.num_groups == norm.num_channels and norm.affine
    x = torch.randn(2, 12, 5, 5)  # per channel and map: instance norm times weight plus bias
    with torch.no_grad():
        norms[0].weight.fill_(2.0), norms[0].bias.fill_(0.5)
    torch.testing.assert_close(
        norms[0](x), 2.0 * nn.functional.instance_norm(x) + 0.5, rtol=1e-5, atol=1e-5
    )


def test_instance_norm_is_per_channel_per_map_with_no_parameters():
    norm = Aligner(4, AlignerConfig(hidden_dim=8)).net[1]
    x = torch.randn(5, 8, 6, 6, requires_grad=True)
    expected = nn.functional.instance_norm(x)  # mean 0, variance 1 per map and channel
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    grad_norm = torch.autograd.grad(norm(x).sin().sum(), x)[0]
    grad_reference = torch.autograd.grad(expected.sin().sum(), x)[0]
    torch.testing.assert_close(grad_norm, grad_reference, rtol=1e-4, atol=1e-5)
    assert not list(norm.parameters()) and not list(norm.buffers())


def test_layer_reductions_differ_and_mean_first_ignores_layer_order():
    torch.manual_seed(0)
    per_layer = Aligner(4, AlignerConfig(hidden_dim=8))
    mean_first = Aligner(4, AlignerConfig(hidden_dim=8, layer_reduction="mean_then_aligner"))
    mean_first.load_state_dict(per_layer.state_dict())
    maps = _maps()
    assert not torch.allclose(per_layer(maps), mean_first(maps))
    single = maps.mean(dim=1, keepdim=True)  # one layer: both reductions agree
    torch.testing.assert_close(per_layer(single), mean_first(single))


def test_gradient_of_attention_loss_reaches_every_aligner_parameter_and_the_input():
    torch.manual_seed(0)
    aligner = Aligner(4, AlignerConfig(hidden_dim=8, norm="group"))
    maps = _maps().requires_grad_(True)
    target = torch.rand(3, 8, 8)
    attention_loss(aligner(maps), target).backward()
    for name, param in aligner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert maps.grad.abs().sum() > 0


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = AlignerConfig(variant="deep", norm="batch", hidden_dim=8, activation="leaky_relu")
    aligner = Aligner(4, cfg)
    optimizer = torch.optim.SGD(aligner.parameters(), lr=0.1)
    for seed in range(3):  # move weights and batch-norm statistics off their initial values
        optimizer.zero_grad()
        attention_loss(aligner(_maps(seed=seed)), torch.rand(3, 8, 8)).backward()
        optimizer.step()
    aligner.eval()
    path = save_aligner(aligner, tmp_path / "sub" / "aligner.safetensors")
    loaded = load_aligner(path, expected=cfg).eval()
    assert loaded.cfg == cfg and loaded.num_heads == 4
    maps = _maps(seed=7)
    assert torch.equal(aligner(maps), loaded(maps))
    for key, value in aligner.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def _old_file(path, cfg: AlignerConfig, aligner: Aligner) -> None:
    """A file as written before layout version 2: the spec has no `layout_version`."""
    spec = {"num_heads": 4, "config": cfg.model_dump(mode="json")}
    tensors = {k: v.contiguous() for k, v in aligner.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(spec)})


def test_old_files_load_unless_their_layout_was_removed(tmp_path):
    torch.manual_seed(0)
    kept = AlignerConfig(variant="sim", norm="batch", hidden_dim=8)
    aligner = Aligner(4, kept).eval()
    _old_file(tmp_path / "sim.safetensors", kept, aligner)
    with pytest.warns(UserWarning, match="trained on pooled word maps"):
        loaded = load_aligner(tmp_path / "sim.safetensors").eval()
    assert torch.equal(loaded(_maps()), aligner(_maps()))
    for cfg, message in [
        (AlignerConfig(norm="group", hidden_dim=8), r"aligner.norm='group' \(8 groups"),
        (AlignerConfig(variant="deep", hidden_dim=8), r"aligner.variant='deep' \(a Norm after"),
    ]:
        _old_file(tmp_path / "old.safetensors", cfg, Aligner(4, cfg))
        with pytest.raises(ValueError, match=f"saved with a removed layout: {message}"):
            load_aligner(tmp_path / "old.safetensors")


def test_load_rejects_wrong_config_and_foreign_files(tmp_path):
    path = save_aligner(Aligner(4, AlignerConfig(hidden_dim=8)), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="aligner.variant: saved 'sim', expected 'light'"):
        load_aligner(path, expected=AlignerConfig(hidden_dim=8, variant="light"))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an aligner file"):
        load_aligner(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_aligner(tmp_path / "missing.safetensors")


def test_bad_input_shape_and_head_count_are_errors():
    with pytest.raises(ValueError, match=r"must be \[n, L, H=4, s, s\], got \(3, 2, 5, 8, 8\)"):
        Aligner(4)(torch.rand(3, 2, 5, 8, 8))
    with pytest.raises(ValueError, match="num_heads must be > 0"):
        Aligner(0)


def test_minmax_of_a_constant_map_is_zero_not_nan():
    out = minmax_normalise(torch.full((2, 4, 4), 3.0))
    assert torch.equal(out, torch.zeros(2, 4, 4))


def test_bf16_input_gives_float32_output():
    out = Aligner(4, AlignerConfig(hidden_dim=8))(_maps().bfloat16())
    assert out.dtype == torch.float32 and out.shape == (3, 8, 8)


@pytest.mark.parametrize("norm", NORMS)
def test_a_16bit_aligner_computes_in_fp32(norm):
    """DeepSpeed casts the Aligner's parameters to bf16/fp16. Its maps (~1e-3 here, ~1e-4 at
    real size) must still be computed in fp32: the output equals an fp32 Aligner with the same
    (rounded) weights, and gradients come back to the 16-bit parameters."""
    torch.manual_seed(0)
    half = Aligner(4, AlignerConfig(hidden_dim=8, norm=norm)).bfloat16()
    full = Aligner(4, AlignerConfig(hidden_dim=8, norm=norm))
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    maps = _maps(side=32)  # softmax over 1024 positions
    out = half(maps)
    torch.testing.assert_close(out, full(maps), rtol=0, atol=1e-5)
    assert out.flatten(1).std(dim=1).min() > 0.05  # not flat maps
    attention_loss(out, torch.rand_like(out)).backward()
    grads = [p.grad for p in half.parameters()]
    assert all(g is not None and g.dtype == torch.bfloat16 for g in grads)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("training", [True, False])
def test_fp32_layers_equal_the_torch_layers_they_extend(norm, training):
    """The Aligner's FP32* layers must do what nn.Conv2d / GroupNorm / BatchNorm2d do, running
    statistics included."""
    import copy

    torch.manual_seed(0)
    ours = Aligner(4, AlignerConfig(hidden_dim=8, norm=norm)).train(training)
    theirs = copy.deepcopy(ours)

    def torch_layers(x: torch.Tensor) -> torch.Tensor:
        for layer in theirs.net:
            ours_only = isinstance(layer, (FP32Conv2d, FP32GroupNorm, FP32BatchNorm2d))
            x = super(type(layer), layer).forward(x) if ours_only else layer(x)
        return x

    x = _maps().flatten(0, 1)  # [n*L, H, s, s]
    for _ in range(2):
        torch.testing.assert_close(ours.net(x), torch_layers(x), rtol=0, atol=1e-6)
    for (name, mine), (_, ref) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-7, msg=name)


# ------------------------------------------------------------------------ word pooling order
def _captured(side: int = 8, layers: int = 2, heads: int = 4, seed: int = 0) -> CapturedAttention:
    """Two samples, rows 3..8 of T=10 captured, keys = the s*s grid (layout: a reshape)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, 2, heads, 6, side * side, generator=generator)
    probs = [p.softmax(-1).requires_grad_(True) for p in logits]  # L x [b, H, R, K]

    def layout(p: torch.Tensor, sample: int) -> torch.Tensor:
        return p.unflatten(-1, (side, side))  # [H, q, K] -> [H, q, s, s]

    return CapturedAttention(probs, layout, side, length=10, rows=range(3, 9))


# sample 0: "dog" (rows 3, 4), "red" (5), "dog" again (3: twice, the word occurs twice);
# sample 1: one word of rows 6..8
WORDS = [[(3, 4), (5,), (3, 5, 3)], [(6, 7, 8)]]


def _aligner(order: str, norm: str = "instance") -> Aligner:
    torch.manual_seed(0)
    return Aligner(4, AlignerConfig(hidden_dim=8, norm=norm, word_pooling=order))


def test_pooling_orders_give_maps_of_the_same_shape_that_differ():
    captured = _captured()
    per_row = aligned_word_maps(_aligner("aligner_then_pool"), captured, WORDS)
    pooled = aligned_word_maps(_aligner("pool_then_aligner"), captured, WORDS)
    assert per_row.shape == pooled.shape == (4, 8, 8)
    assert not torch.allclose(per_row, pooled, atol=1e-3)
    single = [[(5,)], []]  # a one-row word: both orders give the same map
    torch.testing.assert_close(
        aligned_word_maps(_aligner("aligner_then_pool"), captured, single),
        aligned_word_maps(_aligner("pool_then_aligner"), captured, single),
    )


def test_pool_then_aligner_is_the_aligner_on_the_pooled_word_maps_exactly():
    captured, aligner = _captured(), _aligner("pool_then_aligner", norm="batch")
    expected = aligner(torch.cat([captured.word_maps(i, w) for i, w in enumerate(WORDS)]))
    assert torch.equal(aligned_word_maps(aligner, captured, WORDS), expected)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_aligner_then_pool_is_the_per_row_loop_with_one_aligner_call(norm):
    captured, aligner = _captured(), _aligner("aligner_then_pool", norm=norm).eval()
    expected = []
    for sample, words in enumerate(WORDS):
        for rows in words:
            per_row = [aligner(captured.word_maps(sample, [[row]]))[0] for row in rows]  # [s, s]
            expected.append(minmax_normalise(torch.stack(per_row).mean(dim=0)))
    calls = []
    aligner.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    got = aligned_word_maps(aligner, captured, WORDS)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert calls == [3 + 3]  # one call (ZeRO), on the distinct rows: {3, 4, 5} and {6, 7, 8}


@pytest.mark.parametrize("order", ["aligner_then_pool", "pool_then_aligner"])
def test_gradients_reach_the_aligner_and_the_captured_probabilities(order):
    captured, aligner = _captured(), _aligner(order, norm="group")
    out = aligned_word_maps(aligner, captured, WORDS)
    attention_loss(out, torch.rand_like(out)).backward()
    for name, param in aligner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    used = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]).bool()  # [b, R]: WORDS' rows
    for probs in captured.probs:  # gradient on the words' rows, and on them only
        assert torch.equal(probs.grad.abs().sum(dim=(1, 3)) > 0, used)  # [b, H, R, K] -> [b, R]
