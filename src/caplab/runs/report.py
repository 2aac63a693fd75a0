"""Figures and an HTML report for one run or several runs overlaid.

Figures (PNG, log-scaled step axis): loss, one per capability metric, and
seen vs unseen exact match. `report.html` embeds them beside the config and
the final numbers.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from caplab.runs.store import RunStore, atomic_write_bytes  # noqa: E402

NOT_CAPABILITIES = {"step", "tokens", "lr", "elapsed_s", "train_loss", "eval_loss"}


def _label(store: RunStore) -> str:
    """Recipe name plus the run id's random suffix: short, and unique among overlaid runs."""
    info = store.info()
    return f"{info['recipe']} ({info['run_id'][-4:]})"


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _axes(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.set_xscale("symlog", linthresh=1)  # log steps, with step 0 still on the axis
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def make_figures(stores: list[RunStore], out_dir: Path) -> list[Path]:
    """Write the PNG figures for `stores` into `out_dir/figures`; return their paths."""
    figures = Path(out_dir) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = [(_label(s), s.metrics()) for s in stores]
    paths = []

    fig, ax = _axes("loss", "cross-entropy (nats/token)")
    for i, (label, records) in enumerate(runs):
        for key, style in (("train_loss", ":"), ("eval_loss", "-")):
            x, y = _series(records, key)
            if x:
                ax.plot(x, y, style, color=f"C{i}", marker=".", label=f"{label} {key}")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    paths.append(figures / "loss.png")
    _save(fig, paths[-1])

    capabilities = sorted({k for _, records in runs for r in records for k in r if k not in NOT_CAPABILITIES})
    for key in capabilities:
        fig, ax = _axes(key, "accuracy")
        for label, records in runs:
            x, y = _series(records, key)
            ax.plot(x, y, marker=".", label=label)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        paths.append(figures / f"{_slug(key)}.png")
        _save(fig, paths[-1])

    if any("unseen_exact" in r for _, records in runs for r in records):
        fig, ax = _axes("seen vs unseen compositions (exact match)", "exact-match accuracy")
        for i, (label, records) in enumerate(runs):
            color = f"C{i}"
            for key, style in (("seen_exact", "--"), ("unseen_exact", "-")):
                x, y = _series(records, key)
                ax.plot(x, y, style, color=color, marker=".", label=f"{label} {key.split('_')[0]}")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        paths.append(figures / "seen_vs_unseen.png")
        _save(fig, paths[-1])
    return paths


def write_report(stores: list[RunStore], out_dir: Path) -> Path:
    """Figures plus `out_dir/report.html` embedding them with configs and final numbers."""
    out_dir = Path(out_dir)
    paths = make_figures(stores, out_dir)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>caplab report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px;overflow:auto}</style>",
             "</head><body>", f"<h1>caplab report: {html.escape(', '.join(s.path.name for s in stores))}</h1>"]
    parts.append("<h2>Final metrics</h2><table><tr><th>run</th><th>status</th><th>metric</th><th>value</th></tr>")
    for store in stores:
        records = store.metrics()
        final = records[-1] if records else {}
        for key, value in final.items():
            if key not in ("step", "tokens", "lr", "elapsed_s"):
                parts.append(f"<tr><td>{html.escape(store.path.name)}</td><td>{html.escape(store.info()['status'])}</td>"
                             f"<td>{html.escape(key)}</td><td>{value:.4f}</td></tr>")
    parts.append("</table><h2>Figures</h2>")
    parts += [f"<img src='figures/{p.name}' alt='{html.escape(p.stem)}'>" for p in paths]
    for store in stores:
        parts.append(f"<h2>Config of {html.escape(store.path.name)}</h2><pre>{html.escape(json.dumps(store.config_dict(), indent=2))}</pre>")
    parts.append("</body></html>")
    report = out_dir / "report.html"
    atomic_write_bytes(report, "\n".join(parts).encode())
    return report
