"""`SDTarget`, the per-sample output of extraction, and its row form (`schema.TARGET_FIELDS`).

numpy + pyarrow only, so readers of targets need no torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lavender_ray.schema import TARGET_FIELDS, decode_maps, encode_maps
from lavender_ray.sd.prompt import find_words

STAND_IN_HASH = "stand-in"


@dataclass(frozen=True)
class SDTarget:
    """The SD target of one sample (METHOD.md section 2, step 6).

    words: unique lower-cased keys in order of first occurrence; spans: [start, end) character
    span of each word's first occurrence ((-1, -1) where unknown, e.g. read from the authors'
    layout without its text); maps: float32 [n_words, S, S] in [0, 1]; words_cut: distinct words
    dropped by the 77-token window; config_hash: hash of the extraction config."""

    words: list[str]
    spans: list[tuple[int, int]]
    maps: np.ndarray
    words_cut: int
    config_hash: str

    def __post_init__(self) -> None:
        n, shape = len(self.words), tuple(self.maps.shape)
        if len(shape) != 3 or shape[0] != n or shape[1] != shape[2]:
            raise ValueError(f"maps must be [{n}, S, S] for {n} words, got {shape}")
        if len(self.spans) != n:
            raise ValueError(f"{len(self.spans)} spans for {n} words")

    @property
    def map_size(self) -> int:
        return int(self.maps.shape[-1])

    def to_row(self) -> dict[str, Any]:
        """The target columns of one row (maps stored as float16)."""
        return {
            "sd_words": list(self.words),
            "sd_spans": [[int(s), int(e)] for s, e in self.spans],
            "sd_maps": encode_maps(self.maps),
            "sd_map_size": self.map_size,
            "sd_words_cut": int(self.words_cut),
            "sd_config_hash": self.config_hash,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SDTarget:
        """Inverse of `to_row` (maps come back as float32 from their float16 storage)."""
        maps = decode_maps(row["sd_maps"], int(row["sd_map_size"]))
        return cls(
            words=list(row["sd_words"]),
            spans=[(int(s), int(e)) for s, e in row["sd_spans"]],
            maps=maps,
            words_cut=int(row["sd_words_cut"]),
            config_hash=str(row["sd_config_hash"]),
        )


def stand_in_target(text: str, size: int = 32, seed: int = 0) -> SDTarget:
    """A target for `text` without running SD: its words (`prompt.find_words`, in order of first
    occurrence) with seeded random maps in [0, 1). For tests and benchmarks that need the target
    columns, not meaningful maps."""
    words = list(dict.fromkeys(o.key for o in find_words(text)))
    maps = np.random.default_rng(seed).random((len(words), size, size), dtype=np.float32)
    return SDTarget(words, [(-1, -1)] * len(words), maps, 0, STAND_IN_HASH)


def target_columns(targets: list[SDTarget]) -> dict[str, pa.Array]:
    """Targets -> one pyarrow array per `schema.TARGET_FIELDS` column."""
    rows = [t.to_row() for t in targets]
    return {name: pa.array([r[name] for r in rows], type=kind) for name, kind in TARGET_FIELDS}


def with_targets(table: pa.Table, targets: list[SDTarget]) -> pa.Table:
    """`table` (one row per target) with the target columns appended (replaced if present)."""
    if table.num_rows != len(targets):
        raise ValueError(f"{table.num_rows} rows but {len(targets)} targets")
    for name, column in target_columns(targets).items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    return table
