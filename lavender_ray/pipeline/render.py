"""`lavender show-targets`: SD targets read from a cache, a folder of shards or one Parquet file,
drawn as one PNG per sample (`pictures.render_target`)."""

from __future__ import annotations

from pathlib import Path

from lavender_ray.config import ConfigError
from lavender_ray.images import decode_image
from lavender_ray.pictures import render_target
from lavender_ray.pipeline.cache import read_target_rows
from lavender_ray.sd.target import SDTarget
from lavender_ray.storage import exists


def write_target_pngs(
    targets: str, out: Path, limit: int = 8, ids: list[str] | None = None
) -> list[Path]:
    """Render up to `limit` target rows found under `targets` (an extract root, a folder of
    shards or one Parquet file) to `<out>/<id>-<config hash>.png`; returns the paths.
    `ConfigError` (one line) when `targets` holds no target rows, an asked id is not among them,
    or `out` is a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder for the pictures")
    if not exists(targets):
        raise ConfigError(f"--targets {targets!r} does not exist")
    table = read_target_rows(targets)
    if table is None or table.num_rows == 0:
        raise ConfigError(
            f"--targets {targets!r} holds no target shards (Parquet with sd_* columns, as "
            "`lavender extract --out` writes them)"
        )
    rows = table.to_pylist()
    if ids:
        wanted = set(ids)
        rows = [r for r in rows if r["id"] in wanted]
        if not rows:
            raise ConfigError(f"--ids: none of {sorted(wanted)} is among the targets")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows[:limit]:
        target = SDTarget.from_row(row)
        image = decode_image(row["image"], max_pixels=2**31)
        text, title = row["target_text"], row["id"]
        picture = render_target(image, text, target.words, target.maps, title=title)
        path = out / f"{row['id'].replace('/', '_')}-{target.config_hash}.png"
        picture.save(path)
        paths.append(path)
    return paths
