"""The contract every VLM family adapter meets (one file per family in this folder).

Shapes::

    b  batch            T  text (sequence) length     L  captured attention layers
    H  heads per layer  s  map side (config: sd.output_size, 32)

An adapter owns the HF model (optionally wrapped by PEFT), its processor and tokenizer, and knows
where the family's text->image attention lives and how image keys map to a 2-D grid. Nothing
outside `lavender_ray.vlm` names a model family: callers go through `build_adapter` and this
Protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from PIL import Image

ImageInput = Image.Image | bytes


class CapturedAttention:
    """The text->image attention probabilities captured in one forward, laid out on demand.

    `probs` holds one `[b, H, R, K]` tensor per captured layer: the captured query rows (`rows`,
    sorted positions < T; None = all T rows) over the layer's K image keys. `layout(probs_i
    [H, q, K], i) -> [H, q, s, s]` puts sample i's image keys on its 2-D grid and resizes to
    s x s (the family adapter's `sample_maps`). Laying out is linear in the probabilities (a
    re-indexing of keys, then a bilinear resize), so a word's map, the mean of its rows' maps, is
    the layout of the mean of its rows: `word_maps` pools the rows first and lays out one row per
    word, not one per token. `maps()` lays out every captured row (probes, tests).
    """

    def __init__(
        self,
        probs: list[torch.Tensor],
        layout: Callable[[torch.Tensor, int], torch.Tensor],
        size: int,
        length: int,
        rows: Sequence[int] | None = None,
    ) -> None:
        if not probs:
            raise ValueError("no captured attention layer")
        self.probs = probs
        self.layout = layout
        self.size = size
        self.length = length  # T: positions of the sequence
        self.rows = list(range(length)) if rows is None else [int(r) for r in rows]
        self.num_layers = len(probs)
        self.batch_size, self.num_heads, captured, _ = probs[0].shape
        if captured != len(self.rows):
            raise ValueError(f"{captured} captured rows for {len(self.rows)} row positions")
        self._column = {row: c for c, row in enumerate(self.rows)}

    def word_maps(self, sample: int, words: Sequence[Sequence[int]]) -> torch.Tensor:
        """Maps of the words of `sample`, each the mean over its query rows (sub-tokens, repeats).

        words: one group of row positions (< T, captured) per word -> `[n, L, H, s, s]` float32,
        differentiable with respect to the captured probabilities.
        """
        shape = (len(words), self.num_layers, self.num_heads, self.size, self.size)
        device = self.probs[0].device
        if not words:
            return torch.zeros(shape, device=device)
        rows = sorted({row for word in words for row in word})
        if any(not word for word in words) or not all(0 <= row < self.length for row in rows):
            raise ValueError(
                f"word rows must be non-empty groups of positions in 0..{self.length - 1}, "
                f"got {[list(word) for word in words]}"
            )
        missing = [row for row in rows if row not in self._column]
        if missing:
            raise ValueError(
                f"rows {missing} were not captured (captured: {self.rows}); the forward records "
                "the rows that predict answer tokens unless asked for all rows"
            )
        column = {row: c for c, row in enumerate(rows)}
        weights = torch.zeros(len(words), len(rows))  # [n, R']: 1/len(word) on the word's rows
        for i, word in enumerate(words):
            for row in word:
                weights[i, column[row]] += 1.0 / len(word)
        weights = weights.to(device)
        index = torch.tensor([self._column[row] for row in rows], dtype=torch.long, device=device)
        per_layer = []
        for probs in self.probs:
            picked = probs[sample].index_select(1, index).float()  # [H, R, K] -> [H, R', K]
            pooled = torch.einsum("nr,hrk->hnk", weights, picked)  # [H, R', K] -> [H, n, K]
            per_layer.append(self.layout(pooled, sample))  # [H, n, K] -> [H, n, s, s]
        return torch.stack(per_layer).permute(2, 0, 1, 3, 4)  # [L, H, n, s, s] -> [n, L, H, s, s]

    def maps(self) -> torch.Tensor:
        """Every captured row laid out: `[b, L, H, R, s, s]` in the probabilities' dtype (row r
        is position `rows[r]`)."""
        return torch.stack(
            [
                torch.stack([self.layout(probs[i], i) for probs in self.probs])  # [L, H, R, s, s]
                for i in range(self.batch_size)
            ]
        )


@dataclass(frozen=True)
class KeyLayout:
    """Where one sample's image keys sit on the model's patch grid, and where the image is.

    keys: `[gh, gw]` long, the attention column (key index) of each grid patch, row-major as the
    model sees the image; box: (top, left, bottom, right) of the original image on that grid, in
    patch units (fractions allowed). Patches outside the box (padding) are left out of the maps.
    """

    keys: torch.Tensor
    box: tuple[float, float, float, float]


@dataclass
class VLMForwardOutput:
    logits: torch.Tensor  # [b, T, vocab]
    lm_loss: torch.Tensor  # scalar: next-token CE over label positions (labels != -100)
    captured: CapturedAttention  # per-layer text->image probabilities, laid out on demand

    @property
    def attention(self) -> torch.Tensor:
        """[b, L, H, R, s, s]: row r = attention of query position `captured.rows[r]` over the
        image, laid out on the image's 2-D grid, resized to s x s (all T positions after
        `forward(..., rows="all")`). Training uses `captured.word_maps`, which lays out one
        row per word."""
        return self.captured.maps()


@runtime_checkable
class VLMAdapter(Protocol):
    family: str
    model: torch.nn.Module  # the HF model (PEFT-wrapped once LoRA is applied)
    processor: Any
    tokenizer: Any
    layers: list[int]  # decoder-layer indices of the captured attention layers, in map order
    num_layers: int  # L: captured layers
    num_heads: int  # H: heads of each captured layer
    map_size: int  # s used when `forward` is not given one

    def build_inputs(
        self, images: list[ImageInput], conversations: list[list[dict[str, str]]]
    ) -> dict[str, torch.Tensor]:
        """Chat-templated, right-padded batch with `labels` (-100 on everything but assistant
        tokens) and `frame_sizes` (each image's height and width, which lay out its maps); one
        image per conversation, placed in its first user turn."""
        ...

    def model_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`build_inputs`' output without the keys only the layout reads: what the HF model takes."""
        ...

    def key_layout(self, inputs: dict[str, torch.Tensor], sample: int) -> KeyLayout:
        """Where sample `sample`'s image keys sit on the model's patch grid (see `KeyLayout`)."""
        ...

    def point_cell(
        self, inputs: dict[str, torch.Tensor], sample: int, x: float, y: float, size: int
    ) -> tuple[int, int]:
        """The map cell (of `size` x `size`) where point (x, y) of sample `sample`'s original
        image lands: the model's patch holding it, and the cell that patch weighs most in."""
        ...

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        map_size: int | None = None,
        rows: Literal["answer", "all"] = "answer",
    ) -> VLMForwardOutput:
        """One forward pass returning logits, the LM loss and the captured attention.

        `rows="answer"` records the query rows that predict a label token in any sample of the
        batch (the only rows words come from); `"all"` records every row. The probabilities are
        returned, not stored: nothing survives between calls, and gradients flow from them back
        into the captured layers' query/key projections."""
        ...
