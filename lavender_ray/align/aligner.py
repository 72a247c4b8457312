"""The Aligner (METHOD.md section 4): a small conv net from raw VLM attention to SD-like word maps.

Shapes::

    n  words     L  captured layers     H  heads (input channels)     s  map side (32)

    input  [n, L, H, s, s]   per-word VLM attention, heads as channels
    output [n, s, s]         per-word map, min-max normalised to [0, 1] over space

Networks (3x3 convs: padding 1, no bias; every conv but the last is followed by Norm -> Act)::

    light  conv3x3(H->d) conv3x3(d->H)                                        conv1x1(H->1, bias)
    sim    conv3x3(H->d) conv3x3(d->d) conv3x3(d->H)                          conv1x1(H->1, bias)
    deep   conv3x3(H->d) conv3x3(d->d) x3 conv3x3(d->H)                       conv1x1(H->1, bias)

(`d` = `aligner.hidden_dim`; "deep" has 5 3x3 convs.) Norms: instance (no affine; computed as
GroupNorm with one group per channel), batch, group (`gcd(channels, 8)` groups, affine), none.
Activations: ReLU6, LeakyReLU(0.1).
Layer reduction: `aligner_then_mean` runs the one (shared) net on each layer's maps and averages
the outputs over layers; `mean_then_aligner` averages the layers first. The min-max normalisation
comes last, after the layer mean.

Saved as safetensors with the architecture in the file's metadata, so a file rebuilds itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from lavender_ray.config import AlignerConfig
from lavender_ray.tensors import minmax_normalise

GROUP_NORM_MAX_GROUPS = 8
METADATA_KEY = "lavender_aligner"
HIDDEN_3X3_CONVS = {"light": 0, "sim": 1, "deep": 3}  # 3x3 convs between the first and the last


class Aligner(nn.Module):
    """Per-word VLM attention [n, L, H, s, s] -> per-word maps [n, s, s] in [0, 1]."""

    def __init__(self, num_heads: int, cfg: AlignerConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AlignerConfig()
        if num_heads <= 0:
            raise ValueError(f"aligner num_heads must be > 0, got {num_heads}")
        self.num_heads = num_heads
        self.cfg = cfg.model_copy()
        self.net = build_network(num_heads, cfg)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() != 5 or maps.shape[2] != self.num_heads:
            raise ValueError(
                f"aligner input must be [n, L, H={self.num_heads}, s, s], got {tuple(maps.shape)}"
            )
        n, num_layers, heads, side, _ = maps.shape
        maps = maps.float()
        if self.cfg.layer_reduction == "mean_then_aligner":
            out = self.net(maps.mean(dim=1))  # [n, L, H, s, s] -> [n, H, s, s] -> [n, 1, s, s]
            out = out[:, 0]  # [n, 1, s, s] -> [n, s, s]
        else:
            flat = maps.reshape(n * num_layers, heads, side, side)  # -> [n*L, H, s, s]
            out = self.net(flat)  # [n*L, H, s, s] -> [n*L, 1, s, s]
            out = out.reshape(n, num_layers, side, side)  # [n*L, 1, s, s] -> [n, L, s, s]
            out = out.mean(dim=1)  # [n, L, s, s] -> [n, s, s]
        return minmax_normalise(out)

    def spec(self) -> dict[str, object]:
        """Everything needed to rebuild this Aligner (stored in the safetensors metadata)."""
        return {"num_heads": self.num_heads, "config": self.cfg.model_dump(mode="json")}


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


# The Aligner's layers compute in fp32 whatever their parameters' dtype. DeepSpeed keeps those in
# bf16/fp16, where attention maps of ~1e-4 lose their spatial signal (with `norm: none` every
# output map came out flat); the fp32 copies pass gradients back to the 16-bit parameters. They
# stay modules called as modules, so ZeRO-3's hooks see their own parameters.
class FP32Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.float(), self.weight.float(), _fp32(self.bias))


class FP32GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, _fp32(self.weight), _fp32(self.bias),
                            self.eps)


class FP32BatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm_fp32(self, x.float())


def _batch_norm_fp32(layer: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` in fp32 (as `nn.BatchNorm2d.forward`), running statistics updated in place
    in their own dtype."""
    momentum = layer.momentum
    if layer.training and layer.num_batches_tracked is not None:
        layer.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(layer.num_batches_tracked)
    stats = [layer.running_mean, layer.running_var]
    fp32_stats = [_fp32(t) for t in stats]
    out = F.batch_norm(
        x, fp32_stats[0], fp32_stats[1], _fp32(layer.weight), _fp32(layer.bias),
        layer.training or stats[0] is None, momentum or 0.0, layer.eps,
    )  # fmt: skip
    for kept, used in zip(stats, fp32_stats):
        if kept is not None and used is not kept:  # statistics kept in 16 bits
            kept.copy_(used)
    return out



def build_network(num_heads: int, cfg: AlignerConfig) -> nn.Sequential:
    """The conv stack of the configured variant: [m, H, s, s] -> [m, 1, s, s]."""
    if cfg.variant not in HIDDEN_3X3_CONVS:
        raise ValueError(
            f"aligner.variant={cfg.variant!r} is not one of {', '.join(HIDDEN_3X3_CONVS)}"
        )
    hidden = cfg.hidden_dim
    widths = [num_heads, hidden] + [hidden] * HIDDEN_3X3_CONVS[cfg.variant] + [num_heads]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [
            FP32Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            make_norm(cfg.norm, c_out),
            make_activation(cfg.activation),
        ]
    layers.append(FP32Conv2d(num_heads, 1, kernel_size=1, bias=True))
    return nn.Sequential(*layers)


def make_norm(kind: str, channels: int) -> nn.Module:
    """The configured normalisation over `channels` feature maps."""
    if kind == "instance":
        # instance norm = group norm with one group per channel (same statistics, eps 1e-5,
        # no parameters); PyTorch's CPU group-norm kernel runs it 3x faster than InstanceNorm2d
        return FP32GroupNorm(channels, channels, affine=False)
    if kind == "batch":
        return FP32BatchNorm2d(channels)
    if kind == "group":
        return FP32GroupNorm(math.gcd(channels, GROUP_NORM_MAX_GROUPS), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"aligner.norm={kind!r} is not one of instance, batch, group, none")


def make_activation(kind: str) -> nn.Module:
    """The configured activation."""
    if kind == "relu6":
        return nn.ReLU6()
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"aligner.activation={kind!r} is not one of relu6, leaky_relu")


def build_aligner(cfg: AlignerConfig, num_heads: int) -> Aligner:
    """An Aligner for a VLM whose captured layers have `num_heads` heads."""
    return Aligner(num_heads, cfg)


def save_aligner(aligner: Aligner, path: str | Path) -> Path:
    """Write weights and buffers (batch-norm statistics) + the architecture to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in aligner.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(aligner.spec())})
    return path


def load_aligner(
    path: str | Path,
    expected: AlignerConfig | None = None,
    device: str | torch.device = "cpu",
) -> Aligner:
    """Rebuild an Aligner from a `save_aligner` file; with `expected`, the saved architecture
    must equal it (raises naming the differing fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aligner file {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{str(path)!r} is not an aligner file: no {METADATA_KEY!r} metadata")
    spec = json.loads(metadata[METADATA_KEY])
    cfg = AlignerConfig.model_validate(spec["config"])
    if expected is not None and expected != cfg:
        saved, wanted = cfg.model_dump(), expected.model_dump()
        diffs = [
            f"aligner.{k}: saved {saved[k]!r}, expected {wanted[k]!r}"
            for k in saved
            if saved[k] != wanted[k]
        ]
        detail = "; ".join(diffs)
        raise ValueError(f"aligner file {str(path)!r} does not match the config: {detail}")
    aligner = Aligner(int(spec["num_heads"]), cfg)
    aligner.load_state_dict(tensors, strict=True)
    return aligner.to(device)
