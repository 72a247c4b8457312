"""`CapturingAdapter`: what every family adapter shares (inputs, capture, forward).

A family subclass says where its text->image attention modules are (`attention_modules`), where
one sample's image keys sit on the model's patch grid and where the image lies on it
(`key_layout`), and what the model sees on each patch (`patch_pixels`); everything else is here:
chat-templated inputs with assistant-only labels (`chat.py`), per-layer capture through the
CAPTURE_ATTENTION attention function (`capture.py`), the layout of the maps in the frame every
map shares (the image's box of the grid resampled to s x s: METHOD.md section 3a, `sample_maps`,
`point_cell`), and the forward that returns them. `SelfAttentionAdapter` adds what the
self-attention families (LLaVA, Qwen2-VL) share. The inputs are built by `VLMInputs`
(`inputs.py`), which needs the processor only; `build_vlm_inputs` makes a family's without its
weights.

Shapes::

    b  batch   T  sequence length   K  keys of one attention layer   H  heads
    L  captured layers   s  map side
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoProcessor, PretrainedConfig, PreTrainedModel

from lavender_ray.config import VLMConfig
from lavender_ray.families import TINY_PREFIX
from lavender_ray.tensors import axis_weights, resize_maps
from lavender_ray.vlm.base import CapturedAttention, ImageInput, KeyLayout, VLMForwardOutput
from lavender_ray.vlm.capture import CAPTURE_ATTENTION, AttentionRecorder
from lavender_ray.vlm.chat import IGNORE_INDEX
from lavender_ray.vlm.inputs import FRAME_SIZES, VLMInputs


def select_layers(requested: list[int] | None, available: list[int]) -> list[int]:
    """`vlm.attention_layers` (None = all) checked against the family's capturable layers."""
    if requested is None:
        return list(available)
    if not requested:
        raise ValueError("vlm.attention_layers=[] selects no layer; use null for all layers")
    unknown = [i for i in requested if i not in available]
    if unknown:
        raise ValueError(
            f"vlm.attention_layers={requested}: {unknown} are not text->image attention layers of "
            f"this model; allowed: {available}"
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"vlm.attention_layers={requested} names a layer twice")
    return list(requested)


def answer_rows(labels: torch.Tensor) -> torch.Tensor:
    """Query rows that predict an answer token in any sample: `t - 1` for every position `t`
    with `labels[:, t] != -100` (HF labels are unshifted). labels `[b, T]` -> sorted `[R]`."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


class CapturingAdapter(ABC):
    """Base of the family adapters (see `base.VLMAdapter` for the contract).

    Subclasses set `family`, `model_class`, `build_tiny` (the family's offline tiny model:
    `(seed, text_width=..., real_geometry=False) -> (model, processor)`; `real_geometry` gives the
    released model's image geometry, for registration tests), and implement `attention_modules`,
    `key_layout` and `patch_pixels`; `sequence_keys` lists the processor outputs that have the
    sequence on dim 1. Maps are laid out here, the same way for every family: the keys on the
    patch grid, the image's box of it resampled onto the frame (`tensors.resize_maps`).
    """

    family: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    build_tiny: ClassVar[Callable[..., tuple[PreTrainedModel, Any]]]
    sequence_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "labels")

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        *,
        attention_layers: list[int] | None = None,
        map_size: int = 32,
        max_length: int = 512,
        model_id: str | None = None,
    ) -> None:
        self.model_id = model_id or model.config.name_or_path
        self.base_model = model
        self.model: nn.Module = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.map_size = map_size
        self.image_token_id = int(model.config.image_token_id)
        self.vlm_inputs = VLMInputs(
            processor, self.image_token_id, max_length, self.processor_images, self.sequence_keys
        )
        modules = self.attention_modules(model)
        self.layers = select_layers(attention_layers, sorted(modules))
        self.num_layers = len(self.layers)
        self.num_heads = int(model.config.get_text_config().num_attention_heads)
        self.recorder = AttentionRecorder()
        for layer in self.layers:
            self.recorder.watch(modules[layer], layer)
        model.set_attn_implementation({"text_config": CAPTURE_ATTENTION})

    @property
    def max_length(self) -> int:
        """`vlm.max_length`: `build_inputs` cuts sequences to it."""
        return self.vlm_inputs.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.vlm_inputs.max_length = value

    @classmethod
    def build_vlm_inputs(cls, vlm_cfg: VLMConfig) -> VLMInputs:
        """The `VLMInputs` that `build_inputs` runs for `vlm_cfg`, without the model's weights:
        the family's processor and its model's config, the layers built on the meta device (no
        memory, well under a second at 11B), so the family's own `__init__` sets up its image
        handling exactly as for training. A tiny model (`tiny/<family>`) is built as usual."""
        if vlm_cfg.model_id.startswith(TINY_PREFIX):
            model, processor = cls.build_tiny(vlm_cfg.seed)
        else:
            kwargs = {"revision": vlm_cfg.revision, "trust_remote_code": vlm_cfg.trust_remote_code}
            processor = cls.load_processor(vlm_cfg.model_id, **kwargs)
            config = AutoConfig.from_pretrained(vlm_cfg.model_id, **kwargs)
            with torch.device("meta"):
                model = cls.model_class(config)
        adapter = cls(
            model,
            processor,
            attention_layers=vlm_cfg.attention_layers,
            max_length=vlm_cfg.max_length,
            model_id=vlm_cfg.model_id,
        )
        return adapter.vlm_inputs

    # ------------------------------------------------------------------ family hooks
    @classmethod
    def shallow_config(cls, config: PretrainedConfig, depth: int) -> PretrainedConfig:
        """A copy of `config` with `depth` layers of each layer kind (the memory plan measures
        shallow copies and scales by depth). Default: `depth` layers in every sub-config."""
        shallow = copy.deepcopy(config)
        for sub in [shallow, *(getattr(shallow, n, None) for n in shallow.sub_configs)]:
            for key in ("num_hidden_layers", "depth"):
                if isinstance(getattr(sub, key, None), int):
                    setattr(sub, key, depth)
            kinds = getattr(sub, "layer_types", None)  # per-layer attention kinds, if listed
            if isinstance(kinds, list) and kinds:
                sub.layer_types = [kinds[i % len(kinds)] for i in range(depth)]
        return shallow

    @classmethod
    def released_architecture(cls, model_id: str) -> tuple[PretrainedConfig, Any] | None:
        """(config, processor) of a released checkpoint this family knows without the Hub (its
        published architecture; for the memory plan offline), else None."""
        return None

    @classmethod
    def load_processor(cls, model_id: str, **kwargs: Any) -> Any:
        """The processor of a real checkpoint (`kwargs`: revision, trust_remote_code)."""
        return AutoProcessor.from_pretrained(model_id, **kwargs)

    @staticmethod
    @abstractmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        """Decoder-layer index -> the attention module whose probabilities are text->image."""

    @abstractmethod
    def key_layout(self, inputs: dict[str, torch.Tensor], sample: int) -> KeyLayout:
        """Where sample `sample`'s image keys sit on the model's patch grid, and the original
        image's box on it (`base.KeyLayout`), from the processor's outputs and `frame_sizes`."""

    @abstractmethod
    def patch_pixels(self, inputs: dict[str, torch.Tensor], sample: int) -> torch.Tensor:
        """`[3, gh, gw]`: the mean processed pixel of each patch of `key_layout`'s grid, i.e.
        what the model sees where (tests find a planted blob with it)."""

    def processor_images(self, images: list[Image.Image]) -> list[Any]:
        """Images in the nesting the family's processor expects (one image per sample)."""
        return [[image] for image in images]

    # ------------------------------------------------------------------ layout
    def sample_maps(
        self, probs: torch.Tensor, inputs: dict[str, torch.Tensor], sample: int, size: int
    ) -> torch.Tensor:
        """Sample `sample`'s probabilities over its layer's keys `[H, q, K]` -> maps of its image
        in the frame `[H, q, s, s]` (q: any number of query rows, e.g. one pooled row per word):
        the keys on the patch grid, the image's box of it resampled to s x s."""
        layout = self.key_layout(inputs, sample)
        grid = probs[..., layout.keys.to(probs.device)]  # [H, q, K] -> [H, q, gh, gw]
        return resize_maps(grid, size, box=layout.box)  # [H, q, gh, gw] -> [H, q, s, s]

    def point_cell(
        self, inputs: dict[str, torch.Tensor], sample: int, x: float, y: float, size: int
    ) -> tuple[int, int]:
        """The map cell where point (x, y) of sample `sample`'s original image lands: the patch
        of the grid holding it (the image fills `key_layout`'s box uniformly on each axis), then
        the output cell that patch weighs most in the resampling onto the frame."""
        height, width = (int(v) for v in inputs[FRAME_SIZES][sample])
        layout = self.key_layout(inputs, sample)
        top, left, bottom, right = layout.box
        patch = (int(top + (bottom - top) * y / height), int(left + (right - left) * x / width))
        cell = []
        for axis, (start, end) in enumerate(((top, bottom), (left, right))):
            weights = axis_weights(layout.keys.shape[axis], float(start), float(end), size)
            cell.append(int(weights[:, patch[axis]].argmax()))
        return cell[0], cell[1]

    def model_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`build_inputs`' output without the keys only the layout reads: what the HF model takes."""
        return {k: v for k, v in inputs.items() if k != FRAME_SIZES}

    # ------------------------------------------------------------------ inputs
    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The family's chat template applied to HF-style messages (text, not tokens)."""
        return self.vlm_inputs.render(messages, add_generation_prompt)

    def build_inputs(
        self, images: list[ImageInput], conversations: list[list[dict[str, str]]]
    ) -> dict[str, torch.Tensor]:
        return self.vlm_inputs.build_inputs(images, conversations)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        map_size: int | None = None,
        rows: Literal["answer", "all"] = "answer",
    ) -> VLMForwardOutput:
        if "labels" not in inputs:
            raise ValueError("forward needs 'labels' in the inputs (build them with build_inputs)")
        if rows not in ("answer", "all"):
            raise ValueError(f"rows={rows!r} is not one of 'answer', 'all'")
        size = map_size or self.map_size
        length = inputs["input_ids"].shape[1]
        positions = answer_rows(inputs["labels"]) if rows == "answer" else None
        with self.recorder.recording(positions) as records:
            output = self.model(**self.model_inputs(inputs), use_cache=False)
        missing = [layer for layer in self.layers if layer not in records]
        if missing:
            raise RuntimeError(
                f"no attention recorded for layers {missing}; every sample needs an image "
                "(a forward without pixel values skips cross-attention)"
            )
        captured = CapturedAttention(
            [records[layer] for layer in self.layers],
            lambda probs, sample: self.sample_maps(probs, inputs, sample, size),
            size,
            length,
            None if positions is None else positions.tolist(),
        )
        return VLMForwardOutput(logits=output.logits, lm_loss=output.loss, captured=captured)


class SelfAttentionAdapter(CapturingAdapter):
    """Families whose text attends to the image through decoder self-attention (LLaVA,
    Qwen2-VL): every decoder layer's `self_attn` can be captured, images go to the processor as
    a flat list, and an image's keys are the positions of its expanded image tokens."""

    @staticmethod
    def attention_modules(model: PreTrainedModel) -> dict[int, nn.Module]:
        layers = model.model.language_model.layers
        return {i: layer.self_attn for i, layer in enumerate(layers)}

    def processor_images(self, images: list[Image.Image]) -> list[Any]:
        return list(images)

    def image_key_positions(self, input_ids: torch.Tensor, row: int) -> torch.Tensor:
        """Positions of the image tokens of sample `row`: the key columns of its map."""
        return (input_ids[row] == self.image_token_id).nonzero().flatten()  # [n_image_tokens]
