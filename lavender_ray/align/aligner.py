"""The Aligner (METHOD.md section 4): a small conv net from raw VLM attention to SD-like word maps.

Shapes::

    n  words     L  captured layers     H  heads (input channels)     s  map side (32)

    input  [n, L, H, s, s]   per-word VLM attention, heads as channels
    output [n, s, s]         per-word map, min-max normalised to [0, 1] over space

Networks, as the authors' code (3x3 convs: padding 1, no bias)::

    light  conv3x3(H->d) Norm Act  conv3x3(d->H) Norm Act                      conv1x1(H->1, bias)
    sim    conv3x3(H->d) Norm Act  conv3x3(d->d) Norm Act  conv3x3(d->H) Norm Act
                                                                               conv1x1(H->1, bias)
    deep   conv3x3(H->d) Norm Act  conv3x3(d->d) Norm Act  conv3x3(d->d) Act  conv3x3(d->d) Act
           conv3x3(d->H) Norm Act                                              conv1x1(H->1, bias)

(`d` = `aligner.hidden_dim`; "deep" has no Norm after its 3rd and 4th convs.) Norms: instance
(no affine; computed as GroupNorm with one group per channel), batch, group (one group per
channel, affine), none. Activations: ReLU6, LeakyReLU(0.1).
Layer reduction: `aligner_then_mean` runs the one (shared) net on each layer's maps and averages
the outputs over layers; `mean_then_aligner` averages the layers first. The min-max normalisation
comes last, after the layer mean.

Saved as safetensors with the architecture in the file's metadata, so a file rebuilds itself.
Files written before layout version 2 used 8 groups in `group` norm and a Norm after every conv
of `deep`; those two cannot be rebuilt and fail to load with a message saying so (the others
are unchanged and load, with a warning when their config asks for `aligner_then_pool`: they were
trained on pooled word maps, the only order then).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from lavender_ray.config import AlignerConfig
from lavender_ray.tensors import minmax_normalise

METADATA_KEY = "lavender_aligner"
# 2: the authors' `group` norm (one group per channel) and `deep` layout; 1 (no version in the
# file): 8 groups, a Norm after every conv of `deep`
LAYOUT_VERSION = 2
VARIANTS = ("light", "sim", "deep")


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
        return {
            "num_heads": self.num_heads,
            "config": self.cfg.model_dump(mode="json"),
            "layout_version": LAYOUT_VERSION,
        }


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



def conv_layout(variant: str, num_heads: int, hidden: int) -> list[tuple[int, int, bool]]:
    """(in channels, out channels, followed by Norm) of each 3x3 conv of `variant`, in order."""
    heads = num_heads
    layouts = {
        "light": [(heads, hidden, True), (hidden, heads, True)],
        "sim": [(heads, hidden, True), (hidden, hidden, True), (hidden, heads, True)],
        "deep": [
            (heads, hidden, True), (hidden, hidden, True), (hidden, hidden, False),
            (hidden, hidden, False), (hidden, heads, True),
        ],
    }  # fmt: skip
    if variant not in layouts:
        raise ValueError(f"aligner.variant={variant!r} is not one of {', '.join(VARIANTS)}")
    return layouts[variant]


def build_network(num_heads: int, cfg: AlignerConfig) -> nn.Sequential:
    """The conv stack of the configured variant: [m, H, s, s] -> [m, 1, s, s]."""
    layers: list[nn.Module] = []
    for c_in, c_out, normalised in conv_layout(cfg.variant, num_heads, cfg.hidden_dim):
        layers.append(FP32Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False))
        if normalised:
            layers.append(make_norm(cfg.norm, c_out))
        layers.append(make_activation(cfg.activation))
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
        return FP32GroupNorm(channels, channels)  # the authors' GroupNorm(c, c), affine
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
    check_layout_version(path, int(spec.get("layout_version", 1)), cfg)
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


def check_layout_version(path: Path, version: int, cfg: AlignerConfig) -> None:
    """Raise when the file's layout cannot be rebuilt: a newer version, or a version-1 file of a
    layout that changed (`group` norm: 8 groups then; `deep`: a Norm after every conv then)."""
    if version > LAYOUT_VERSION:
        raise ValueError(
            f"aligner file {str(path)!r} has layout version {version}; this code reads up to "
            f"{LAYOUT_VERSION}"
        )
    if version == 1:
        removed = [
            f"aligner.{field}={value!r} ({how})"
            for field, value, how in (
                ("norm", "group", "8 groups, now one per channel as the authors"),
                ("variant", "deep", "a Norm after every conv, now none after the 3rd and 4th"),
            )
            if getattr(cfg, field) == value
        ]
        if removed:
            raise ValueError(
                f"aligner file {str(path)!r} was saved with a removed layout: "
                f"{'; '.join(removed)}; it cannot be rebuilt, train the Aligner again"
            )
        if cfg.word_pooling == "aligner_then_pool":
            warnings.warn(
                f"aligner file {str(path)!r} was trained on pooled word maps (pool_then_aligner, "
                "the only order before layout version 2); it is loaded with "
                "aligner.word_pooling=aligner_then_pool as its config says",
                stacklevel=3,
            )
