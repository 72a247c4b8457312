"""What autograd keeps for backward, measured: the bytes of every tensor saved during a forward,
split by the kind of layer that saved it.

    with SavedTensors(module) as saved:
        out = module(batch, 0, 10)
    saved.by_kind()   # {"MllamaSelfAttentionDecoderLayer in language_model": 2.1e6, ...,
                      #  "outside layers": 9.4e6}

A layer is an element of any `nn.ModuleList` in the module (decoder layers, vision encoder
layers); its kind is its class name and the list's name ("MllamaVisionEncoderLayer in
global_transformer"), so local and global vision layers, or text and vision layers of one class,
count apart; `layer_counts` counts the layers of each kind. Everything saved outside such a
layer (embeddings, the LM head and its loss, the Aligner, the word maps) counts as "outside
layers". Each storage counts once while it lives, whatever the number of views saved from it
(on CPU, GPU or the meta device, where tensors have shapes and no memory), and parameters never
count: they are not activations (a frozen linear layer saves its weight for its input's
gradient).

The saved tensors are not kept: autograd holds a placeholder instead, so a measured forward
needs the memory of an inference forward, not of a training one, and cannot be backpropagated.
A storage is told apart from a later one at the same address by a weak reference to it.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any

import torch
from torch import nn

OUTSIDE = "outside layers"


def layers_by_kind(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every layer of `module` (element of an `nn.ModuleList`) with its kind."""
    layers = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList):
            where = name.split(".")[-2] if "." in name else name
            layers += [(layer, f"{type(layer).__name__} in {where}") for layer in sub]
    return layers


def layer_counts(module: nn.Module) -> dict[str, int]:
    """How many layers of each kind `module` has (works on the meta device)."""
    return dict(Counter(kind for _, kind in layers_by_kind(module)))


class SavedTensors:
    """A context manager that records the storages autograd saves inside it, by layer kind,
    without keeping them."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._stack = [OUTSIDE]
        self._live: dict[int, Any] = {}  # storage -> weak reference, while it may be alive
        self._totals: Counter[str] = Counter()  # kind -> bytes
        self._params: set[int] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.tokens: dict[str, int] = {}  # kind -> tokens one layer of that kind processes
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _no_backward)

    def _pack(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata  # the storage itself: works on the meta device, where no address is
        if key in self._params:
            return None
        seen = self._live.get(key)
        if seen is not None and not torch.UntypedStorage._expired(seen):
            return None  # a view of a storage already counted
        if seen is not None:
            torch.UntypedStorage._free_weak_ref(seen)
        self._live[key] = storage._weak_ref()
        self._totals[self._stack[-1]] += storage.nbytes()
        return None

    def _enter_layer(self, kind: str, args: tuple, kwargs: dict) -> None:
        self._stack.append(kind)
        hidden = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
        if torch.is_tensor(hidden) and hidden.dim() >= 2:
            tokens = hidden.numel() // hidden.shape[-1]
            self.tokens[kind] = max(self.tokens.get(kind, 0), tokens)

    def _leave_layer(self) -> None:
        self._stack.pop()

    def __enter__(self) -> SavedTensors:
        self._params = {p.untyped_storage()._cdata for p in self.module.parameters()}
        for layer, kind in layers_by_kind(self.module):
            self._handles.append(layer.register_forward_pre_hook(
                lambda _m, a, kw, kind=kind: self._enter_layer(kind, a, kw), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(
                lambda _m, _a, _o: self._leave_layer()))
        self._hooks.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hooks.__exit__(kind, err, tb)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for ref in self._live.values():
            torch.UntypedStorage._free_weak_ref(ref)
        self._live.clear()

    def by_kind(self) -> dict[str, int]:
        """Saved bytes per layer kind (summed over the layers of that kind)."""
        return dict(self._totals)

    def total(self) -> int:
        return sum(self._totals.values())


def _no_backward(_: None) -> torch.Tensor:
    raise RuntimeError("a forward measured by SavedTensors kept no tensors for backward")
