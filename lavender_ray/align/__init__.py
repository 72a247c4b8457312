"""The Aligner between raw VLM attention and SD word maps (METHOD.md section 4)."""

from lavender_ray.align.aligner import Aligner, build_aligner, load_aligner, save_aligner

__all__ = ["Aligner", "build_aligner", "load_aligner", "save_aligner"]
