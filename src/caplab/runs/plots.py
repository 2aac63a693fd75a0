"""The one figure helper every report uses: matplotlib Figures without pyplot state, saved atomically as PNG.

Figures are `matplotlib.figure.Figure` objects (no global pyplot state, no
backend switch), so drawing a report changes nothing in a notebook's session.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from matplotlib.figure import Figure

from caplab.runs.store import atomic_write_bytes

DPI = 110


def subplots(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.0, **kwargs):
    """(figure, axes) as pyplot's `subplots` would give them, on a Figure of its own."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def step_axes(title: str, ylabel: str):
    """(figure, axes) with training steps on a log axis that still shows step 0."""
    fig, ax = subplots()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def legend(ax, **kwargs) -> None:
    """A legend where there is something to label (a run with no records draws nothing)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def plain_number(value: float, _position=None) -> str:
    """A tick label as a reader writes it: 0, 0.01, 1, 250, 10,000 (not 10^4), 1e+06 beyond."""
    if value == 0:
        return "0"
    if 1 <= abs(value) < 1e6 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:g}"


def _plain_log_ticks(fig: Figure) -> None:
    """Log and symlog axes labelled with plain numbers (minor ticks unlabelled)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() in ("log", "symlog"):
                axis.set_major_formatter(FuncFormatter(plain_number))
                axis.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: Path) -> Path:
    """Lay out and write `fig` as a PNG at `path` (atomically); log axes get plain tick labels."""
    _plain_log_ticks(fig)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def finish_log(fig: Figure, ax, path: Path, xlabel: str, ylabel: str, log_y: bool = False) -> None:
    """Log x (and y) axes, labels, grid and legend, then save."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, path)


def series(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of `key` in metric records, skipping records without it."""
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def slug(name: str) -> str:
    """A file-name-safe version of a metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
