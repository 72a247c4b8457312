"""`lavender data inspect`: what the configured sources really yield, before any SD or training.

One pass over `read_sources(cfg)` (the mixture exactly as training samples it) counts records
per source, words per target text and targets longer than CLIP's window, keeps the first
`samples` records of each source, and reads the rejects back per source and reason. The kept
samples are printed (question / answer / target text) and drawn as a PNG contact sheet.

Word counts use the SD side's word rule (`[^\\W_]+`, `lavender_ray.words.WORD_RE`). A target with
more than `CLIP_WORD_WINDOW` words certainly loses words to CLIP's 77-token window (every word
is at least one token; 2 of the 77 are start and end); the exact count per sample is the SD
stage's `sd_words_cut`.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image, ImageDraw, ImageOps

from lavender_ray.config import LavenderConfig
from lavender_ray.data.checks import check_input_paths
from lavender_ray.data.mixture import source_quotas
from lavender_ray.images import decode_image
from lavender_ray.pictures import font_for, wrap_to_width
from lavender_ray.pipeline.read import read_sources, sampling_fractions
from lavender_ray.placement import check_shared_folders, cluster_nodes
from lavender_ray.rejects import read_rejects, summarise_rejects
from lavender_ray.schema import RecordError, parse_messages
from lavender_ray.words import WORD_RE

CLIP_WORD_WINDOW = 75  # 77 CLIP positions minus start and end tokens
THUMB = 192  # contact sheet: thumbnail side in pixels
TEXT_HEIGHT = 120  # contact sheet: text area under each thumbnail
SHEET_COLUMNS = 4
FONT_SIZE = 11  # contact sheet: text under each thumbnail, 14 pixels a line
SHEET_NAME = "contact_sheet.png"


@dataclass
class SourceStats:
    """What one source yielded."""

    records: int = 0
    words: int = 0
    beyond_clip: int = 0  # targets with more than CLIP_WORD_WINDOW words
    quota: float | None = None  # data.total_samples * weight / sum(weights)
    fraction: float = 1.0


@dataclass
class InspectReport:
    sources: dict[str, SourceStats]
    rejects: dict[str, dict[str, int]]  # source -> {"<stage>/<reason>": count}
    samples: list[dict[str, Any]] = field(default_factory=list)
    sheet: Path | None = None
    rejects_dir: str | None = None


# ------------------------------------------------------------------------------ pure helpers
def conversation_text(messages_json: str) -> tuple[str, str]:
    """(first question, answers) of a record's `messages`; answers of several turns are
    joined by " | " so the turns stay visible."""
    messages = parse_messages(messages_json)
    question = next((m["content"] for m in messages if m["role"] == "user"), "")
    answers = " | ".join(m["content"] for m in messages if m["role"] == "assistant")
    return question, answers


def thumbnail_png(image: bytes, max_pixels: int) -> tuple[bytes, str]:
    """Encoded image -> (PNG thumbnail bytes, "") or a grey tile and the decode failure."""
    try:
        picture = decode_image(image, max_pixels)
        note = ""
    except RecordError as err:
        picture, note = Image.new("RGB", (THUMB, THUMB), (200, 200, 200)), err.reason
    picture = ImageOps.contain(picture, (THUMB, THUMB))  # small images are scaled up too
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue(), note


def summarise(batch: pa.Table, samples: int, max_pixels: int) -> pa.Table:
    """`map_batches`: one small row per record (source, id, word count) and, for the first
    `samples` records of each source in the batch, the decoded sample (texts + thumbnail)."""
    rows, seen = [], Counter()
    for record in batch.to_pylist():
        source = record["source"]
        seen[source] += 1
        row = {"source": source, "id": record["id"],
               "words": len(WORD_RE.findall(record["target_text"])), "sample": None}
        if seen[source] <= samples:
            question, answer = conversation_text(record["messages"])
            png, note = thumbnail_png(record["image"], max_pixels)
            row["sample"] = json.dumps({"question": question, "answer": answer,
                                        "target_text": record["target_text"], "note": note})
            row["thumbnail"] = png
        rows.append(row)
    schema = pa.schema([("source", pa.string()), ("id", pa.string()), ("words", pa.int64()),
                        ("sample", pa.string()), ("thumbnail", pa.binary())])
    return pa.Table.from_pylist(rows, schema=schema)


def rejects_by_source(table: pa.Table) -> dict[str, dict[str, int]]:
    """Reject rows -> {source: {"<stage>/<reason>": count}}."""
    out: dict[str, Counter] = {}
    for row in table.select(["source", "stage", "reason"]).to_pylist():
        out.setdefault(row["source"], Counter())[f"{row['stage']}/{row['reason']}"] += 1
    return {source: dict(counts) for source, counts in sorted(out.items())}


# ------------------------------------------------------------------------------ contact sheet
def _tile_text(sample: dict[str, Any]) -> list[str]:
    """The lines under a thumbnail, each fitting its width: source and id, then question, answer
    and target text in two lines each, and a note on the image."""
    width = THUMB - 8
    lines = wrap_to_width(f"[{sample['source']}] {sample['id']}", width, FONT_SIZE, max_lines=1)
    for label, key in (("Q", "question"), ("A", "answer"), ("T", "target_text")):
        lines += wrap_to_width(f"{label}: {sample[key]}", width, FONT_SIZE, max_lines=2) or [
            f"{label}:"]
    if sample.get("note"):
        lines += wrap_to_width(f"image: {sample['note']}", width, FONT_SIZE, max_lines=1)
    return lines


def contact_sheet(samples: list[dict[str, Any]], path: Path) -> Path:
    """Draw each sample (thumbnail + id, question, answer, target) into one PNG grid."""
    columns = max(1, min(SHEET_COLUMNS, len(samples)))
    rows = max(1, -(-len(samples) // columns))
    cell_h = THUMB + TEXT_HEIGHT
    sheet = Image.new("RGB", (columns * THUMB, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % columns) * THUMB, (i // columns) * cell_h
        with Image.open(io.BytesIO(sample["thumbnail"])) as thumb:
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        for k, line in enumerate(_tile_text(sample)):
            draw.text((x + 4, y + THUMB + 3 + 14 * k), line, fill=(0, 0, 0),
                      font=font_for(line, FONT_SIZE))
        draw.rectangle([x, y, x + THUMB - 1, y + cell_h - 1], outline=(180, 180, 180))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------------------ driver
def inspect_data(cfg: LavenderConfig, out_dir: str | Path, samples: int = 2) -> InspectReport:
    """Read the configured mixture once; count, collect samples, write the contact sheet.

    Rejects go to `<out_dir>/rejects` (emptied first, so the counts are this run's); read tasks
    on other nodes write them there, so on a multi-node cluster `out_dir` must be shared."""
    check_input_paths(cfg)
    check_shared_folders(cfg, cluster_nodes(), "--out")
    out = Path(out_dir).resolve()
    rejects_dir = out / "rejects"
    shutil.rmtree(rejects_dir, ignore_errors=True)
    quotas = source_quotas(cfg.data)
    fractions = sampling_fractions(cfg.data)
    stats = {s.name: SourceStats(quota=quotas.get(s.name), fraction=fractions[s.name])
             for s in cfg.data.sources}
    kept: list[dict[str, Any]] = []
    summary = read_sources(cfg, str(rejects_dir), fractions).map_batches(
        summarise, fn_kwargs={"samples": samples, "max_pixels": cfg.data.max_image_pixels},
        batch_format="pyarrow", num_cpus=cfg.data.read_num_cpus,
    )
    for row in summary.iter_rows():
        source = stats[row["source"]]
        source.records += 1
        source.words += row["words"]
        source.beyond_clip += row["words"] > CLIP_WORD_WINDOW
        already = sum(s["source"] == row["source"] for s in kept)
        if row["sample"] is not None and already < samples:
            kept.append({"source": row["source"], "id": row["id"],
                         "thumbnail": row["thumbnail"], **json.loads(row["sample"])})
    order = {name: i for i, name in enumerate(stats)}
    kept.sort(key=lambda sample: (order[sample["source"]], sample["id"]))
    report = InspectReport(stats, rejects_by_source(read_rejects(str(rejects_dir))), kept,
                           rejects_dir=str(rejects_dir))
    if kept:
        report.sheet = contact_sheet(kept, out / SHEET_NAME)
    return report


def format_report(report: InspectReport) -> str:
    """The report as the text `lavender data inspect` prints."""
    lines = ["source              records   quota  fraction  words/target  >75 words"]
    for name, s in report.sources.items():
        quota = f"{s.quota:7.0f}" if s.quota is not None else "      -"
        mean = s.words / s.records if s.records else 0.0
        lines.append(f"{name:<18}{s.records:>9} {quota}  {s.fraction:8.4f}  {mean:12.1f}"
                     f"  {s.beyond_clip:>9}")
    if report.rejects_dir is None:
        lines.append("rejects:" if report.rejects else "rejects: none")
        for source, reasons in report.rejects.items():
            for reason, count in sorted(reasons.items()):
                lines.append(f"  {source:<18}{reason:<32}{count:>7}")
    else:  # per reason, with the first ids and why (`rejects.summarise_rejects`)
        lines.append(summarise_rejects(report.rejects_dir))
    for sample in report.samples:
        lines += [f"--- [{sample['source']}] {sample['id']}",
                  f"  question: {sample['question']}", f"  answer:   {sample['answer']}",
                  f"  target:   {sample['target_text']}"]
        if sample["note"]:
            lines.append(f"  image:    {sample['note']}")
    if report.sheet:
        lines.append(f"contact sheet: {report.sheet}")
    return "\n".join(lines)
