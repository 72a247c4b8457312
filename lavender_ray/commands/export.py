"""`lavender export`: a trained run -> adapter + Aligner + processor + config + model card,
optionally the merged model and an upload to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os

HELP = (
    "export a trained run (run folder, checkpoint or saved run) into a folder to serve or share: "
    "PEFT adapter, Aligner, processor, config and model card; --merge adds the full model with "
    "the LoRA merged, --push-to-hub uploads the folder"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN_OR_CHECKPOINT",
        help="a local run folder (<storage>/<run_name>: its adapter/, else the latest "
        "checkpoint's export/), a checkpoint_step<N>/ folder, or a saved run (vlm/ + "
        "aligner.safetensors + config.yaml); not a URI",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="a new or empty local folder for the export"
    )
    parser.add_argument(
        "--merge", action="store_true",
        help="also write merged/: the full model with the LoRA merged in (loads on CPU), "
        "loadable by the family's from_pretrained without PEFT",
    )  # fmt: skip
    parser.add_argument(
        "--push-to-hub", metavar="REPO", default=None,
        help="then upload the folder to this Hugging Face model repo (created if missing; needs "
        "a token, e.g. `hf auth login`)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray import console
    from lavender_ray.export import describe, export_run

    # --merge loads the model on CPU and `save_pretrained` unwraps it through accelerate, which
    # imports DeepSpeed: left to detect an accelerator, it warns on a CPU machine that it found
    # no GPU, a line about nothing the user asked for
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with console.short_warnings():
        result = export_run(args.run, args.out, args.merge, args.push_to_hub)
    print(describe(result))
    return 0
