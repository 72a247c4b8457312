"""`lavender show-targets`: SD targets read from a cache, a folder of shards or one Parquet file,
drawn as one PNG per sample (`pictures.render_target`)."""

from __future__ import annotations

from pathlib import Path

from lavender_ray.images import decode_image
from lavender_ray.pictures import render_target
from lavender_ray.pipeline.cache import read_target_rows
from lavender_ray.sd.target import SDTarget


def write_target_pngs(
    targets: str, out: Path, limit: int = 8, ids: list[str] | None = None
) -> list[Path]:
    """Render up to `limit` target rows found under `targets` (an extract root, a folder of
    shards or one Parquet file) to `<out>/<id>-<config hash>.png`; returns the paths."""
    table = read_target_rows(targets)
    if table is None:
        return []
    rows = table.to_pylist()
    if ids:
        wanted = set(ids)
        rows = [r for r in rows if r["id"] in wanted]
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
