"""The Aligner: every variant/norm/activation/reduction, gradients, save/load."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lavender_ray.align import Aligner, build_aligner, load_aligner, save_aligner
from lavender_ray.align.aligner import FP32BatchNorm2d, FP32Conv2d, FP32GroupNorm
from lavender_ray.config import AlignerConfig
from lavender_ray.loss import attention_loss
from lavender_ray.tensors import minmax_normalise

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
