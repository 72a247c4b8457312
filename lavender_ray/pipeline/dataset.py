"""The trainer's dataset: sources -> (SD target stage | cache | precomputed targets) -> records
with targets, ready for `iter_torch_batches` in each train worker.

Every mode passes its records through the VLM check (`vlm_check`: the chat template, the
processor and `vlm.max_length` run as the trainer will), so no record reaches a train worker
that its collate would fail on. In stream mode the check runs before the SD stage (no SD time
for a record that cannot train); in cache mode after it, on the cached and the new records alike
(the cache is keyed by the SD config, so a cached record was never checked against this VLM);
in precomputed mode after the join, where it also checks the joined targets.

`pipeline.mode`:

- ``stream`` (default): records stream through the SD actor pool straight into training;
  nothing is written to disk except rejects.
- ``cache``: like stream, but targets already in the cache (`pipeline.cache_path`, keyed by
  record id + image hash + SD config hash) are read back instead of recomputed, and new targets
  are written through to it. The sources are read twice: once for the keys (no SD), once to
  stream. When every record is cached, no SD actor pool starts.
- ``precomputed``: targets come from `pipeline.precomputed_path`: Parquet with the target
  columns (a cache root, a folder of shards or one file), joined to the records by id, or the
  authors' layout (`pipeline.precomputed_format=authors`:
  `<image name>/lpm_attention/<stem>/attention_<word>.jpg`, image name = record id + `.jpg`
  unless the id ends with an image suffix; local or shared folder).

Records without targets are rejected with their reason (`no_targets`), never dropped silently.
The pieces: `read` (sources -> records), `vlm_check`, `sd_stage` (the SD actor pool), `cache`,
`precomputed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lavender_ray.config import LavenderConfig
from lavender_ray.pipeline.extract import cached_dataset
from lavender_ray.pipeline.precomputed import precomputed_dataset
from lavender_ray.pipeline.read import read_sources
from lavender_ray.pipeline.sd_stage import add_sd_targets
from lavender_ray.pipeline.vlm_check import add_vlm_check

if TYPE_CHECKING:
    from ray.data import Dataset


def build_train_dataset(cfg: LavenderConfig, rejects_dir: str) -> Dataset:
    """The Dataset of checked records with SD targets for `cfg.pipeline.mode`."""
    mode = cfg.pipeline.mode
    if mode == "stream":
        checked = add_vlm_check(read_sources(cfg, rejects_dir), cfg, rejects_dir)
        return add_sd_targets(checked, cfg, rejects_dir)
    if mode == "cache":
        return add_vlm_check(cached_dataset(cfg, rejects_dir), cfg, rejects_dir)
    return add_vlm_check(precomputed_dataset(cfg, rejects_dir), cfg, rejects_dir)
