"""Pure layout functions every family shares: image tokens -> 2-D grid -> s x s maps.

Every function here is a pure tensor function (no model, no state); the family adapters call them
(and their own `vlm/<family>/geometry.py`) with numbers they read from the model config and the
processor outputs, never hard-coded ones.

Shapes::

    ...      any leading dims (e.g. heads, queries)
    gh, gw   token grid height / width
    s        output map side (32)
"""

from __future__ import annotations

import torch


def token_grid(probs: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Row-major image tokens `[..., gh*gw]` -> `[..., gh, gw]`."""
    if probs.shape[-1] != grid_h * grid_w:
        raise ValueError(
            f"{probs.shape[-1]} image tokens do not fill a {grid_h}x{grid_w} grid "
            f"({grid_h * grid_w})"
        )
    return probs.reshape(*probs.shape[:-1], grid_h, grid_w)  # [..., gh*gw] -> [..., gh, gw]
