"""How the plan scales measurements of small copies of a model up to the model itself.

    narrow = scaled_config(config, f)          # every width / f, head counts kept
    bytes = full_depth(one, two, layers)       # one and two layers of each kind -> full depth
    bytes = full_width(at_f, at_f_half, f)     # widths 1/f and 2/f -> full width

Every tensor autograd saves is either proportional to the widths (hidden states, MLP
activations, queries/keys/values) or independent of them (attention probabilities, logits,
LoRA's rank-r activations, the maps): bytes = a + b * width, so two widths give the full-width
figure. Each extra layer of a kind adds the same bytes (the first one differs: its input needs
no gradient), so two depths give the full depth. `tests/test_plan.py` checks both against
direct measurements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PretrainedConfig

# Width keys scaled in a config and in each of its sub-configs; head counts are kept, so head
# dims scale with the widths.
WIDTH_KEYS = ("hidden_size", "intermediate_size", "embed_dim", "vision_output_dim",
              "projection_dim", "out_hidden_size", "head_dim")  # fmt: skip
HEAD_KEYS = ("num_attention_heads", "attention_heads", "num_heads", "num_key_value_heads")
MAX_FACTOR = 16
MIN_HEAD_DIM = 8  # narrower heads leave the linear regime: CPU attention kernels change


@dataclass(frozen=True)
class Measurement:
    by_kind: dict[str, int]  # saved bytes
    layers: dict[str, int]  # layers of each kind
    tokens: int  # text tokens of the micro-batch
    layer_tokens: dict[str, int]  # tokens one layer of each kind processes


def full_depth(shallow: Measurement, deeper: Measurement, layers: dict[str, int]) -> dict[str, float]:
    """Saved bytes per kind at the full depth `layers` from two depths of the same width: the
    bytes of a kind grow by the same amount per layer (the first layer's extra is the offset).
    Outside the layers, the bytes grow with the number of captured layers (their maps)."""
    out = {}
    for kind in shallow.by_kind.keys() | deeper.by_kind.keys():
        a, b = shallow.by_kind.get(kind, 0), deeper.by_kind.get(kind, 0)
        n_a, n_b = shallow.layers.get(kind, 0), deeper.layers.get(kind, 0)
        if n_b == n_a:  # not a repeated layer (the Aligner's own lists)
            out[kind] = float(a)
            continue
        per_layer = (b - a) / (n_b - n_a)
        out[kind] = a + per_layer * (layers.get(kind, n_a) - n_a)
    return out


def full_width(narrow: dict[str, float], wider: dict[str, float], factor: int) -> dict[str, float]:
    """Bytes at full width from widths 1/factor and 2/factor: every saved tensor is either
    proportional to the widths or independent of them, so bytes = a + b * width."""
    out = {}
    for kind in narrow.keys() | wider.keys():
        a, b = narrow.get(kind, 0.0), wider.get(kind, 0.0)
        out[kind] = max(2 * a - b + factor * (b - a), 0.0)
    return out


def scaled_config(config: PretrainedConfig, factor: int) -> PretrainedConfig:
    """`config` with every width divided by `factor` (head counts kept: head dims shrink)."""
    return _rescaled(config, lambda width: width // factor)


def _rescaled(config: PretrainedConfig, scale: Callable[[int], int]) -> PretrainedConfig:
    """A copy of `config` with `scale` applied to every width and to multimodal RoPE's
    sections of the head dim (Qwen2-VL's `mrope_section`)."""
    scaled = copy.deepcopy(config)
    for sub in _configs(scaled):
        for key in WIDTH_KEYS:
            value = getattr(sub, key, None)
            if isinstance(value, int) and value > 0:
                setattr(sub, key, scale(value))
        rope = getattr(sub, "rope_parameters", None)
        if isinstance(rope, dict) and rope.get("mrope_section"):
            rope["mrope_section"] = [scale(s) for s in rope["mrope_section"]]
    return scaled


def widened_config(config: PretrainedConfig, factor: int) -> PretrainedConfig:
    """`config` with every width multiplied by `factor` (for tests of the narrowing)."""
    return _rescaled(config, lambda width: width * factor)


def _configs(config: PretrainedConfig) -> list[PretrainedConfig]:
    subs = [getattr(config, name, None) for name in getattr(config, "sub_configs", {})]
    return [config, *(s for s in subs if isinstance(s, PretrainedConfig))]


def width_factor(config: PretrainedConfig) -> int:
    """The largest power of two <= MAX_FACTOR dividing every width and head dim, leaving head
    dims of at least MIN_HEAD_DIM; 1 when only the full width qualifies."""
    factor = MAX_FACTOR
    while factor > 1 and not all(_divides(sub, factor) for sub in _configs(config)):
        factor //= 2
    return factor if factor >= 2 else 1


def _divides(sub: PretrainedConfig, factor: int) -> bool:
    widths = [getattr(sub, k) for k in WIDTH_KEYS if isinstance(getattr(sub, k, None), int)]
    heads = [getattr(sub, k) for k in HEAD_KEYS if isinstance(getattr(sub, k, None), int)]
    hidden = getattr(sub, "hidden_size", None)
    head_dims = [hidden // h for h in heads if isinstance(hidden, int) and h and hidden % h == 0]
    rope = getattr(sub, "rope_parameters", None)
    sections = rope.get("mrope_section") or [] if isinstance(rope, dict) else []
    return all(w % factor == 0 for w in [*widths, *sections]) and all(
        d % factor == 0 and d // factor >= MIN_HEAD_DIM for d in head_dims)
