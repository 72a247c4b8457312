"""The SD actor's side of the plan, from the SD stack's configs on the meta device (shapes, no
memory, no weights; the UNet has no data-dependent operations, so everything is measured, at
full size, in about a second):

- the components' weights in `sd.dtype` (UNet, VAE, text encoder);
- the activations of a batch: with `sd.inversion=null_text` the inner steps backpropagate through
  the UNet to the null embedding, so autograd keeps one UNet forward of the active samples
  (`plan.saved.SavedTensors`); plus the transient working set of the largest operation (3x its
  output: its input, its output and a workspace as large);
- the FLOPs of one image (`torch.utils.flop_counter`): the VAE encoder, and the UNet evaluations
  of the schedule (`unet_evaluations`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from lavender_ray.config import ConfigError, SDConfig
from lavender_ray.plan.saved import SavedTensors
from lavender_ray.sd.settings import resolve_dtype
from lavender_ray.sd.tiny import (
    MAX_TOKENS,
    OFFLINE_SD_IDS,
    RANDOM_SD14_ID,
    TOKENIZER_VOCAB_SIZE,
    offline_configs,
)
from lavender_ray.tensors import TORCH_DTYPES

# SD 1.x repositories whose architecture is SD-1.4's (used when the Hub cannot be reached)
SD1_IDS = ("CompVis/stable-diffusion-v1-4", "CompVis/stable-diffusion-v1-2",
           "stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")


@dataclass(frozen=True)
class SDEstimate:
    weights: float  # bytes
    activations: float  # bytes, one batch
    flops_per_image: float
    unet_evaluations: float  # per image, UNet-forward equivalents (backward counted as one)
    params: int
    source: str


def unet_evaluations(sd: SDConfig) -> float:
    """UNet forward equivalents per image, worst case (no null-text early stop). DDIM: the
    inversion and the recorded denoising, n each. Null-text: the inversion (n), the recorded
    conditional pass (n), the null pass of the guidance (n) and K inner steps per denoising
    step, each a forward and a backward to the embedding (about one forward more: no weight
    gradients)."""
    n = sd.ddim_steps
    if sd.inversion == "ddim":
        return 2.0 * n
    return 3.0 * n + 2.0 * n * sd.null_text_inner_steps


def sd_configs(sd: SDConfig) -> tuple[dict[str, Any], dict[str, Any], CLIPTextConfig, str]:
    """(UNet config, VAE config, text encoder config, where they came from) for `sd.model_id`."""
    if sd.model_id in OFFLINE_SD_IDS:
        return (*_offline(sd.model_id), "offline builder")
    local = Path(sd.model_id).is_dir()
    kwargs = {"revision": sd.revision, "local_files_only": not local and sd.model_id in SD1_IDS}
    try:
        with warnings.catch_warnings():  # diffusers 0.42 hands huggingface_hub an argument it
            # deprecated, and `lavender plan` printed the warning on every Hub id
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument")
            unet = dict(UNet2DConditionModel.load_config(sd.model_id, subfolder="unet", **kwargs))
            vae = dict(AutoencoderKL.load_config(sd.model_id, subfolder="vae", **kwargs))
        text = CLIPTextConfig.from_pretrained(sd.model_id, subfolder="text_encoder", **kwargs)
        return unet, vae, text, "local folder" if local else "Hub config"
    except (OSError, ValueError) as err:
        if sd.model_id in SD1_IDS:  # random/sd14 is SD-1.4's published architecture
            return (*_offline(RANDOM_SD14_ID), "published SD-1.4 architecture")
        raise ConfigError(
            f"sd.model_id={sd.model_id!r}: cannot read its unet/vae/text_encoder configs to plan "
            f"({err}); give a local diffusers folder, or a Hub id this machine can reach "
            "(without internet: HF_HUB_OFFLINE=1 and the model in the HF cache)"
        ) from err


def _offline(model_id: str) -> tuple[dict[str, Any], dict[str, Any], CLIPTextConfig]:
    """The configs `build_offline_sd(model_id)` builds from (its text encoder's vocabulary: the
    tiny tokenizer's unless the sizes name one)."""
    unet, vae, sizes = offline_configs(model_id)
    vocab = sizes.get("vocab_size", TOKENIZER_VOCAB_SIZE)
    text = CLIPTextConfig(**{**sizes, "vocab_size": vocab, "max_position_embeddings": MAX_TOKENS,
                             "pad_token_id": 1, "bos_token_id": vocab - 2,
                             "eos_token_id": vocab - 1})
    return dict(unet), dict(vae), text


class LargestOutput(TorchDispatchMode):
    """Records the bytes of the largest tensor any operation returns inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def _fused_attention(  # noqa: ANN001
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: object
) -> torch.Tensor:
    """SDPA as a GPU runs it (flash for fp16/bf16 without a mask, else memory-efficient): on the
    meta device torch would pick the math kernel, which keeps the [q, k] probabilities."""
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, query.requires_grad, dropout_p, is_causal, scale=scale)[0]


def estimate_sd(sd: SDConfig) -> SDEstimate:
    unet_cfg, vae_cfg, text_cfg, source = sd_configs(sd)
    dtype = TORCH_DTYPES[resolve_dtype(sd.dtype, "cuda")]  # as an SD actor on a GPU loads it
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not its warning about casting with `to()`
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_cfg).to(dtype).requires_grad_(False)
            vae = AutoencoderKL.from_config(vae_cfg).to(dtype).requires_grad_(False)
            text = CLIPTextModel(text_cfg).to(dtype).requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    params = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    side = sd.image_size // 2 ** (len(vae.config.block_out_channels) - 1)  # the latent's
    b = sd.batch_size

    def unet_forward(batch: int, grad: bool) -> None:
        latents = torch.zeros(batch, unet.config.in_channels, side, side, device="meta",
                              dtype=dtype)
        context = torch.zeros(batch, MAX_TOKENS, text_cfg.hidden_size, device="meta",
                              dtype=dtype, requires_grad=grad)
        with torch.set_grad_enabled(grad):
            unet(latents, torch.tensor(500, device="meta"), encoder_hidden_states=context)

    image = torch.zeros(1, vae.config.in_channels, sd.image_size, sd.image_size, device="meta",
                        dtype=dtype)
    with mock.patch.object(F, "scaled_dot_product_attention", _fused_attention):
        with FlopCounterMode(display=False) as flops:
            unet_forward(1, False)
        unet_flops = flops.get_total_flops()
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            vae.encode(image)
        vae_flops = flops.get_total_flops()
        largest = LargestOutput()
        with largest, torch.no_grad():
            unet_forward(b, False)
            vae.encode(image.expand(b, -1, -1, -1))
        activations = 3.0 * largest.bytes
        if sd.inversion == "null_text":
            with SavedTensors(unet) as saved:
                unet_forward(b, True)
            activations += saved.total()
    evaluations = unet_evaluations(sd)
    return SDEstimate(
        weights=float(params * dtype.itemsize),
        activations=activations,
        flops_per_image=float(vae_flops + evaluations * unet_flops),
        unet_evaluations=evaluations,
        params=params,
        source=source,
    )
