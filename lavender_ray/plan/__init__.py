"""Sizing a preset before a cluster starts (`lavender plan`, and `lavender train`'s check):
GPU memory and speed of a train worker (`plan.vlm`) and an SD actor (`plan.sd`) on each GPU type
(`plan.gpus`), assembled and checked in `plan.build`. Activations are measured with autograd's
saved-tensor hooks (`plan.saved`), on CPU for the VLM and on the meta device for SD."""

from lavender_ray.plan.build import Plan, build_plan

__all__ = ["Plan", "build_plan"]
