"""`lavender extract`: SD per-word attention targets for the configured data sources.

Reads `data.sources`, runs the SD stage (`lavender_ray.pipeline.sd_stage`) on the cluster given
by `RAY_ADDRESS` / `--address` or a local Ray sized to it, and appends Parquet shards to the
target cache under `--out` (local path or pyarrow URI such as `s3://bucket/prefix`): records
already cached under the same extraction config are skipped. Rejected records land in `<out>/rejects/<run id>/`.
"""

from __future__ import annotations

import argparse

from lavender_ray.cli import PREFLIGHT_HELP, add_config_arguments, add_verbose_argument
from lavender_ray.config import ConfigError, load_config

HELP = (
    "extract SD per-word attention targets into a Parquet target cache; the console shows a "
    "progress bar (records, images/s, ETA), Ray's own output goes to <out>/logs/ (--verbose: on "
    "the console instead). " + PREFLIGHT_HELP
)
INTERRUPTED = ("the targets written so far stay in the cache: the same command goes on from "
               "them (it counts them as already cached)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--out", default=None,
        help="cache root: local path or URI (s3://...); default: pipeline.cache_path, so that "
        "train with pipeline.mode=cache reads what this writes",
    )  # fmt: skip
    parser.add_argument(
        "--authors-out",
        default=None,
        help="also write this config's targets in the authors' lpm_attention layout here",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)"
    )
    add_verbose_argument(parser, "<out>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.console import Console
    from lavender_ray.pipeline.extract import export_authors_layout, extract_to_cache
    from lavender_ray.pipeline.preflight import check_sources
    from lavender_ray.rejects import summarise_rejects
    from lavender_ray.resources import connect
    from lavender_ray.runs import LOGS_DIR

    cfg = load_config(args.preset, args.overrides)
    out = args.out or cfg.pipeline.cache_path
    if not out:
        raise ConfigError("give --out DIR, or set pipeline.cache_path in the "
                          "config (the cache a pipeline.mode=cache run reads)")
    check_sources(cfg)  # before Ray starts: a missing file, a source of rejects: one line
    with Console("extract", f"{out.rstrip('/')}/{LOGS_DIR}", args.verbose):
        connect(cfg, "extract", args.address)
        summary = extract_to_cache(cfg, out)
        print(f"targets:    {summary.targets_dir}  (config hash {summary.config_hash})")
        print(f"            {summary.written} written, {summary.cached_before} already cached")
        print(summarise_rejects(summary.rejects_dir))
        print(f"config:     {summary.config_path}")
        if args.authors_out:
            n = export_authors_layout(out, summary.config_hash, args.authors_out)
            print(f"authors:    {args.authors_out}  ({n} images)")
    return 0
