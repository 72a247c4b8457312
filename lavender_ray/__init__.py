"""lavender_ray: Lavender diffusion instruction tuning on Ray.

Stable Diffusion per-word cross-attention maps (`lavender_ray.sd`) become targets for a VLM's
text-to-image attention (`lavender_ray.vlm`, `lavender_ray.align`, `lavender_ray.loss`), streamed
with Ray Data into a Ray Train + DeepSpeed trainer (`lavender_ray.train`).

Importing the package starts no Ray and needs no GPU.
"""

__version__ = "0.1.0"
