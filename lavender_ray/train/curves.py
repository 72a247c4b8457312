"""`<run>/report/curves.png`: the curves of a run's reported metrics (`<run>/metrics.jsonl`), one
panel each: the three losses, the matched words, the loss weights lambda_t and alpha_t, the step
time. Drawn by the driver at the end of `train` with matplotlib's object API (no pyplot, no GUI
backend), which comes with the `tracking` extra (MLflow needs it).
"""

from __future__ import annotations

import io
from typing import Any

from lavender_ray.storage import JsonlTail

# (panel title, metric keys drawn in it); a panel whose keys were never reported says so
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss/total", ("loss/total",)),
    ("loss/lm", ("loss/lm",)),
    ("loss/att", ("loss/att",)),
    ("align/matched_words", ("align/matched_words",)),
    ("lambda_t and alpha_t", ("schedule/lambda", "schedule/alpha")),
    ("time/step_s", ("time/step_s",)),
)
COLUMNS = 3


def read_history(text: str) -> list[dict[str, Any]]:
    """The reports of a `metrics.jsonl` text (`JsonlTail.parse`: a half-written or
    corrupt line is skipped, so a run killed mid-write still gets its curves)."""
    return JsonlTail.parse(text.encode())


def draw_curves(history: list[dict[str, Any]], title: str = "") -> bytes:
    """A PNG of `PANELS` over the steps of `history` (the reported metrics, in order)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = -(-len(PANELS) // COLUMNS)
    figure = Figure(figsize=(4.2 * COLUMNS, 3.0 * rows), dpi=100, layout="constrained")
    if title:
        figure.suptitle(title)
    for axes, (name, keys) in zip(figure.subplots(rows, COLUMNS).ravel(), PANELS):
        drawn = 0
        for key in keys:
            points = [(m["step"], m[key]) for m in history if key in m and "step" in m]
            if points:
                steps, values = zip(*points)
                axes.plot(steps, values, marker="o" if len(points) <= 30 else None,
                          markersize=3, label=key)
                drawn += 1
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if drawn > 1:
            axes.legend(fontsize=8)
        if not drawn:
            axes.text(0.5, 0.5, "not reported", ha="center", va="center",
                      transform=axes.transAxes, color="grey")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
