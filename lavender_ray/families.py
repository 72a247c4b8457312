"""The VLM families lavender_ray supports: the one list, read by config validation
(`vlm.family`) and by the adapter registry (`lavender_ray.vlm.registry`).

Each entry names the adapter class of a family package `lavender_ray/vlm/<family>/`, imported
only when that family is used. Adding a family = its folder (adapter, geometry, tiny builder)
+ one line here; the shared contract tests then run it (see the README, "Adding a VLM family").
Nothing here imports a model library.
"""

from __future__ import annotations

TINY_PREFIX = "tiny/"  # `tiny/<family>`: the family's tiny model, built offline from its config

VLM_FAMILIES: dict[str, str] = {
    "mllama": "lavender_ray.vlm.mllama.adapter:MllamaAdapter",
    "llava": "lavender_ray.vlm.llava.adapter:LlavaAdapter",
    "qwen2_vl": "lavender_ray.vlm.qwen2_vl.adapter:Qwen2VLAdapter",
}


def registered_families() -> list[str]:
    """The supported family names, sorted."""
    return sorted(VLM_FAMILIES)


def check_family(family: str) -> str:
    """`family` if it is registered, else `ValueError` listing the registered families."""
    if family not in VLM_FAMILIES:
        raise ValueError(
            f"unknown VLM family {family!r}; registered families: "
            f"{', '.join(registered_families())}"
        )
    return family


def check_tiny_model(model_id: str, family: str) -> str:
    """`model_id`, unless it names a tiny model (`tiny/<name>`) other than `family`'s: then
    `ValueError` naming both and the tiny model of `family`."""
    expected = TINY_PREFIX + family
    if model_id.startswith(TINY_PREFIX) and model_id != expected:
        raise ValueError(
            f"vlm.model_id={model_id!r} does not match vlm.family={family!r}; the tiny model "
            f"of this family is {expected!r} (a family and its model change together: "
            f"--set vlm.model_id={expected})"
        )
    return model_id
