"""Loading the SD components for a model id, device and precision (what the `sd` section means
without loading anything, its dtype and hash, is in `settings`).

Offline ids (`tiny/sd`, `random/sd14`) are built from configs (`lavender_ray.sd.tiny`); any other
id (a hub id or a local folder in the diffusers layout) goes through diffusers / transformers
`from_pretrained(model_id, subfolder=..., revision=...)`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention import FeedForward
from diffusers.models.resnet import ResnetBlock2D
from transformers import CLIPTextModel, CLIPTokenizer

from lavender_ray.config import SDConfig
from lavender_ray.sd.settings import resolve_dtype
from lavender_ray.sd.tiny import OFFLINE_SD_IDS, SCHEDULER_KWARGS, SDComponents, build_offline_sd
from lavender_ray.tensors import TORCH_DTYPES


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


COMPILE_VARIANTS = 64  # compiled variants per block class (`compile_regions`)


def load_components(sd: SDConfig, device: torch.device) -> SDComponents:
    """UNet, VAE, text encoder, tokenizer and DDIM scheduler on `device`, in `sd.dtype`, eval mode,
    gradients off (null-text inversion differentiates w.r.t. its embeddings only)."""
    dtype = TORCH_DTYPES[resolve_dtype(sd.dtype, device.type)]
    if sd.model_id in OFFLINE_SD_IDS:
        parts = build_offline_sd(sd.model_id, seed=sd.seed)  # on CPU, moved below
    else:
        parts = _from_pretrained(sd.model_id, sd.revision, dtype)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        if module.dtype != dtype:  # offline stacks are built in fp32
            cast_floats(module, dtype)
        module.to(device).eval().requires_grad_(False)
    if sd.channels_last:
        parts.unet.to(memory_format=torch.channels_last)
    if sd.compile:
        compile_regions(parts.unet)
    return parts


def compile_regions(unet: UNet2DConditionModel) -> None:
    """`torch.compile` each ResNet block, feed-forward layer and self-attention (`attn1`) of
    `unet` in place; the cross-attention modules (`attn2`) stay eager, so the processors the
    capture installs on them run as written and swapping them recompiles nothing.

    Every instance of a block class shares one `forward`, and torch compiles one variant per
    input shape (channels x resolution x batch: SD-1.4's ResNet blocks alone have more than
    torch's default 8), so the per-function limit is raised to `COMPILE_VARIANTS`; past the
    default, the later blocks would silently run eager."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               COMPILE_VARIANTS)
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D | FeedForward) or name.endswith(".attn1"):
            module.compile()


def cast_floats(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point weights with `half/bfloat16/float/double` (diffusers' `to(dtype)`
    warns about modules kept in fp32 even for models that have none)."""
    casts = {
        torch.float16: module.half,
        torch.bfloat16: module.bfloat16,
        torch.float32: module.float,
        torch.float64: module.double,
    }
    casts[dtype]()


def _from_pretrained(model_id: str, revision: str | None, dtype: torch.dtype) -> SDComponents:
    """A diffusers-layout SD 1.x repository (hub id or local folder), loaded in `dtype`."""
    kwargs = {"revision": revision}
    return SDComponents(
        unet=UNet2DConditionModel.from_pretrained(
            model_id, subfolder="unet", torch_dtype=dtype, **kwargs
        ),
        vae=AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype, **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(
            model_id, subfolder="text_encoder", dtype=dtype, **kwargs
        ),
        tokenizer=CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kwargs),
        scheduler=DDIMScheduler.from_pretrained(
            model_id,
            subfolder="scheduler",
            clip_sample=SCHEDULER_KWARGS["clip_sample"],
            set_alpha_to_one=SCHEDULER_KWARGS["set_alpha_to_one"],
            **kwargs,
        ),
    )
