"""Pure maths of METHOD.md section 2, steps 4-5: cross-attention probabilities -> per-token maps
-> per-word maps. No state, no model: tensors and lists in, tensors and lists out.

Shapes::

    b      batch (samples)            h   attention heads
    q      query length = side * side k   text tokens (77 for CLIP)
    S      output map size (32)       w   words of one sample

Step 4 (aggregation): each recorded call gives probs [b, h, q, k]; mean over heads; reshape to
[b, k, side, side]; bilinear resize (align_corners=False) to [b, k, S, S]; then the plain mean
over all recorded (layer, step) pairs. `capture.AttentionStore` keeps running sums per map side
and resizes each sum once at the end (`mean_of_recorded`): the same numbers, by linearity.

Step 5 (tokens -> words): which token belongs to which word is planned from the text alone
(`prompt.plan_words`). A word's map is the mean of the maps of all its tokens over all its
occurrences that fit the token window, then min-max normalised: (m - min) / (max - min + 1e-8).
"""

from __future__ import annotations

import math

import torch

from lavender_ray.tensors import minmax_normalise, resize_maps


# ------------------------------------------------------------------------------ step 4: maps
def head_mean_maps(probs: torch.Tensor) -> torch.Tensor:
    """probs [b, h, q, k] -> mean over heads laid out as maps [b, k, side, side] (>= fp32).

    `q` must be a square number: the queries are the latent pixels in row-major order."""
    b, _, q, k = probs.shape
    side = math.isqrt(q)
    if side * side != q:
        raise ValueError(f"query length {q} is not a square; cannot lay it out as a map")
    maps = probs.to(torch.promote_types(probs.dtype, torch.float32)).mean(dim=1)  # [b, q, k]
    return maps.transpose(1, 2).reshape(b, k, side, side)  # [b, q, k] -> [b, k, side, side]



def probs_to_token_maps(probs: torch.Tensor, output_size: int) -> torch.Tensor:
    """One recorded call: probs [b, h, q, k] -> per-token maps [b, k, S, S]."""
    return resize_maps(head_mean_maps(probs), output_size)


def mean_of_recorded(
    sums_by_side: dict[int, torch.Tensor], n_recorded: int, output_size: int
) -> torch.Tensor:
    """The plain mean over recorded (layer, step) calls of `probs_to_token_maps`, from the sums
    of `head_mean_maps` per map side ({side: [b, k, side, side]}): resizing is linear, so
    resizing each side's sum once equals summing the resized maps of every call."""
    if n_recorded <= 0 or not sums_by_side:
        raise ValueError("no cross-attention call was recorded; the capture store is empty")
    total = sum(resize_maps(maps, output_size) for maps in sums_by_side.values())
    return total / n_recorded


# ---------------------------------------------------------------------------- step 5: words
def word_maps(token_maps: torch.Tensor, token_word: list[int], n_words: int) -> torch.Tensor:
    """Per-token maps [k, S, S] of one sample -> per-word maps [w, S, S], min-max normalised.

    A word's map is the mean over its token positions (all occurrences); see `prompt.plan_words`."""
    k, size, _ = token_maps.shape
    if len(token_word) != k:
        raise ValueError(f"token_word has {len(token_word)} entries for {k} token maps")
    index = torch.tensor(token_word, device=token_maps.device)
    member = (index.unsqueeze(0) == torch.arange(n_words, device=index.device).unsqueeze(1))
    flat = token_maps.reshape(k, size * size)  # [k, S, S] -> [k, S*S]
    weights = member.to(flat.dtype)  # [w, k]: 1 where token k belongs to word w
    counts = weights.sum(dim=1, keepdim=True)  # [w, 1]
    if n_words and bool((counts == 0).any()):
        raise ValueError("a word has no token; plan_words and the token maps disagree")
    means = (weights @ flat) / counts.clamp(min=1)  # [w, S*S]
    return minmax_normalise(means.reshape(n_words, size, size))
