"""The SD per-word attention target extractor (METHOD.md section 2).

    extractor = SDExtractor(cfg.sd)                 # loads the components once
    targets = extractor.extract(images, texts)      # one SDTarget per (image, text)

A batch of B images with B different texts runs as one UNet call per step (2B rows under
classifier-free guidance). Pipeline per batch:

1. resize the whole image (no crop: METHOD.md section 3a) to `sd.image_size`, VAE-encode (latent
   mean) and scale;
2. DDIM inversion conditioned on each sample's text (`sd.ddim_steps`, guidance 1);
3. denoising from the inverted latent over the same steps, the cross-attention capture recording:
   - `ddim`: plain conditional DDIM, unguided (negative-prompt inversion: it retraces the
     inverted trajectory);
   - `null_text`: null-text inversion (Mokady et al. 2023): at each step, each sample's own
     unconditional embedding is optimised (Adam, lr `null_text_lr * (1 - i/100)`, at most
     `null_text_inner_steps` steps, fp32) so that the guided step lands on the inverted
     trajectory; a sample stops as soon as its loss is below `null_text_early_stop + i * 2e-5`
     (the reference implementation's schedule), the others go on. The conditional pass at
     each step is the one recorded, and its noise prediction serves both the optimisation and
     the guided step;
4. per-token maps (mean over recorded calls), then words (`aggregate`).

Latents and null-text embeddings live in fp32 (fp64 when `sd.dtype` is fp64); the UNet, VAE and
text encoder run in `sd.dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMInverseScheduler
from PIL import Image

from lavender_ray.config import SDConfig
from lavender_ray.sd.aggregate import word_maps
from lavender_ray.sd.capture import AttentionStore, attn2_map_sides, capture, select_modules
from lavender_ray.sd.components import default_device_type, load_components
from lavender_ray.sd.prompt import TextPlan, plan_text
from lavender_ray.sd.settings import resolve_dtype, sd_config_hash
from lavender_ray.sd.target import SDTarget
from lavender_ray.tensors import TORCH_DTYPES, axis_weights

EARLY_STOP_SLOPE = 2e-5  # null-text early-stop threshold grows by this per step (reference code)
# Null-text loss scale when the UNet runs in fp16: the loss is a mean over the latent's elements
# (16k at 512 px), so its gradients (~1e-6) fall below fp16's normal range in the UNet backward.
# Scaled before backward, unscaled in fp32 before Adam, as torch's GradScaler does.
FP16_LOSS_SCALE = 2.0**14


@dataclass(frozen=True)
class Trace:
    """What one batch run produced. token_maps: [B, 77, S, S], >= fp32 (None without capture);
    latents: the encoded images [B, 4, h, w]; reconstruction: the denoised latents [B, 4, h, w]."""

    token_maps: torch.Tensor | None
    latents: torch.Tensor
    reconstruction: torch.Tensor


def to_model_input(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> [B, 3, size, size] float32 in [-1, 1]: the whole image resized (bicubic) to
    SD's square input, never cropped, so the latent grid is the frame (METHOD.md section 3a)."""
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0  # [B, size, size, 3]
    return batch.permute(0, 3, 1, 2).contiguous()  # [B, size, size, 3] -> [B, 3, size, size]


def sd_point_cell(
    x: float, y: float, width: int, height: int, image_size: int, output_size: int, side: int
) -> tuple[int, int]:
    """Where point (x, y) of a `width` x `height` image lands in the output map, through SD's
    geometry: its pixel of the `image_size` input (`to_model_input`), the latent of an attention
    layer of map side `side`, and the output cell that latent weighs most after the resize to
    `output_size` (`tensors.resize_maps`)."""
    px, py = x * image_size / width, y * image_size / height  # pixel of the SD input
    cell = [int(v * side / image_size) for v in (py, px)]  # the layer's latent cell
    weights = axis_weights(side, 0.0, float(side), output_size)  # [output_size, side]
    return int(weights[:, cell[0]].argmax()), int(weights[:, cell[1]].argmax())


class SDExtractor:
    """Loads the SD components once and turns (image, text) batches into `SDTarget`s.

    `device` defaults to CUDA when available; `sd.dtype: auto` resolves to fp16 on CUDA, fp32
    elsewhere. Exposes `.unet .vae .text_encoder .tokenizer .scheduler`."""

    def __init__(self, sd: SDConfig, device: str | torch.device | None = None) -> None:
        self.sd = sd
        self.device = torch.device(device or default_device_type())
        self.dtype = TORCH_DTYPES[resolve_dtype(sd.dtype, self.device.type)]
        self.latent_dtype = torch.promote_types(self.dtype, torch.float32)
        self.null_text_loss_scale = FP16_LOSS_SCALE if self.dtype == torch.float16 else 1.0
        self.config_hash = sd_config_hash(sd, self.device.type)
        parts = load_components(sd, self.device)
        self.unet, self.vae = parts.unet, parts.vae
        self.text_encoder, self.tokenizer = parts.text_encoder, parts.tokenizer
        self.scheduler = parts.scheduler
        self.inverse_scheduler = DDIMInverseScheduler.from_config(self.scheduler.config)
        self.max_tokens = int(self.tokenizer.model_max_length)
        self.capture_names = select_modules(
            attn2_map_sides(self.unet, self._latent_side()), sd.attention_resolutions
        )
        self._null_embedding = self._encode_texts([self.tokenize("").input_ids])  # [1, 77, D]

    # ------------------------------------------------------------------------- public API
    def tokenize(self, text: str) -> TextPlan:
        """Token ids (padded/truncated to the window) and the token -> word plan of `text`."""
        return plan_text(self.tokenizer, text, self.max_tokens)

    def extract(self, images: list[Image.Image], texts: list[str]) -> list[SDTarget]:
        """One target per (image, text), computed as one batch. A text with no word in the
        window gives a target with zero words (callers usually reject those first)."""
        return self.extract_planned(images, [self.tokenize(t) for t in texts])

    def extract_planned(self, images: list[Image.Image], plans: list[TextPlan]) -> list[SDTarget]:
        """`extract` for texts already tokenized with `tokenize`."""
        trace = self.trace(images, [p.input_ids for p in plans])
        assert trace.token_maps is not None
        targets = []
        for maps, plan in zip(trace.token_maps, plans):
            w = plan.words
            words = word_maps(maps, w.token_word, len(w.words)).float().cpu().numpy()  # [w, S, S]
            targets.append(SDTarget(w.words, w.spans, words, w.words_cut, self.config_hash))
        return targets

    @torch.no_grad()
    def trace(
        self,
        images: list[Image.Image],
        input_ids: list[list[int]],
        capture_maps: bool = True,
        store: AttentionStore | None = None,
    ) -> Trace:
        """Encode, invert and denoise one batch; record cross-attention when `capture_maps`
        (into `store` when given, so callers can inspect what was recorded)."""
        if len(images) != len(input_ids) or not images:
            raise ValueError(
                f"need one text per image, got {len(images)} images, {len(input_ids)} texts"
            )
        latents = self._encode_images(images)  # [B, 4, h, w]
        cond = self._encode_texts(input_ids)  # [B, 77, D]
        trajectory = self._invert(latents, cond)
        store = store if store is not None else AttentionStore(self.sd.output_size)
        names = self.capture_names if capture_maps else []
        with capture(self.unet, store, names):
            if self.sd.inversion == "null_text":
                final = self._denoise_null_text(trajectory, cond, store)
            else:
                final = self._denoise_ddim(trajectory[-1], cond, store)
        maps = store.token_maps().cpu() if capture_maps else None
        return Trace(maps, latents, final)

    # --------------------------------------------------------------------------- stages
    def _latent_side(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.sd.image_size % factor:
            raise ValueError(f"sd.image_size={self.sd.image_size} must be a multiple of {factor}")
        return self.sd.image_size // factor

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = to_model_input(images, self.sd.image_size).to(self.device, self.dtype)
        latents = self.vae.encode(pixels).latent_dist.mean  # [B, 4, h, w]
        return latents.to(self.latent_dtype) * self.vae.config.scaling_factor

    @torch.no_grad()
    def _encode_texts(self, input_ids: list[list[int]]) -> torch.Tensor:
        ids = torch.tensor(input_ids, device=self.device)  # [B, 77]
        return self.text_encoder(ids)[0]  # [B, 77, D] in the model dtype

    def _eps(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Noise prediction in the latent dtype, the UNet running in its own dtype."""
        out = self.unet(latents.to(self.dtype), t, encoder_hidden_states=context.to(self.dtype))
        return out.sample.to(self.latent_dtype)

    def _invert(self, latents: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """DDIM inversion, conditional only: [z_0, z_1, ..., z_n] (each [B, 4, h, w])."""
        self.inverse_scheduler.set_timesteps(self.sd.ddim_steps, device=self.device)
        trajectory = [latents]
        for t in self.inverse_scheduler.timesteps:
            eps = self._eps(trajectory[-1], t, cond)
            trajectory.append(self.inverse_scheduler.step(eps, t, trajectory[-1]).prev_sample)
        return trajectory

    def _denoise_ddim(
        self, latents: torch.Tensor, cond: torch.Tensor, store: AttentionStore
    ) -> torch.Tensor:
        """DDIM denoising from the inverted latent, conditional and unguided (guidance 1, which
        the config enforces in this mode: it keeps the denoising on the inverted trajectory),
        recording every step."""
        self.scheduler.set_timesteps(self.sd.ddim_steps, device=self.device)
        for t in self.scheduler.timesteps:
            with store.recording():
                eps = self._eps(latents, t, cond)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return latents

    def _denoise_null_text(
        self, trajectory: list[torch.Tensor], cond: torch.Tensor, store: AttentionStore
    ) -> torch.Tensor:
        """Null-text inversion; the denoising it reconstructs is the recorded pass."""
        n = self.sd.ddim_steps
        self.scheduler.set_timesteps(n, device=self.device)
        latents = trajectory[-1]
        b = latents.shape[0]
        null = self._null_embedding.to(self.latent_dtype).expand(b, -1, -1).clone()  # [B, 77, D]
        for i, t in enumerate(self.scheduler.timesteps):
            with store.recording():
                eps_cond = self._eps(latents, t, cond)
            null = self._optimise_null(latents, t, eps_cond, trajectory[n - 1 - i], null, i)
            eps_null = self._eps(latents, t, null)
            eps = eps_null + self.sd.guidance_scale * (eps_cond - eps_null)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return latents

    def _optimise_null(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        eps_cond: torch.Tensor,
        target: torch.Tensor,
        null: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        """Per-sample Adam on each null embedding [77, D] (latent dtype) for denoising step
        `step`; the active samples share one batched UNet call per inner step and stop on their
        own."""
        params = [row.clone().requires_grad_(True) for row in null]
        lr = self.sd.null_text_lr * (1.0 - step / 100.0)
        optimisers = [torch.optim.Adam([p], lr=lr) for p in params]
        threshold = self.sd.null_text_early_stop + step * EARLY_STOP_SLOPE
        active = list(range(len(params)))
        g = self.sd.guidance_scale
        scale = self.null_text_loss_scale
        for _ in range(self.sd.null_text_inner_steps):
            with torch.enable_grad():
                context = torch.stack([params[i] for i in active])  # [a, 77, D]
                eps_null = self._eps(latents[active], t, context)
                eps = eps_null + g * (eps_cond[active] - eps_null)
                rebuilt = self.scheduler.step(eps, t, latents[active]).prev_sample
                losses = ((rebuilt - target[active]) ** 2).mean(dim=(1, 2, 3))  # [a]
                # samples are independent: each embedding gets its own gradient
                (losses.sum() * scale).backward()
            grads = [params[i].grad.div_(scale) for i in active]  # type: ignore[union-attr]
            finite = torch.stack([gr.isfinite().all() for gr in grads]).tolist()
            for i, ok in zip(active, finite):
                if ok:  # an overflowed fp16 backward skips the step, as GradScaler does
                    optimisers[i].step()
                optimisers[i].zero_grad(set_to_none=True)
            done = losses.detach() < threshold
            active = [i for i, stop in zip(active, done.tolist()) if not stop]
            if not active:
                break
        return torch.stack([p.detach() for p in params])  # [B, 77, D]
