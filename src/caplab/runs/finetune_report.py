"""Figures and report.html of a fine-tuning study (`caplab.finetune_study`)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from caplab.runs.report import _finish_log_figure, _save, plt
from caplab.runs.store import atomic_write_bytes


def _finish_accuracy(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _grouped_bars(path: Path, categories: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    """One group of bars per category, one bar per series."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.25 * len(categories) * len(series) + 2), 4.0), dpi=110)
    x, width = np.arange(len(categories)), 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=f"C{i}")
    ax.set_xticks(x, categories, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def finetune_figures(figures: Path, summary: dict) -> list[str]:
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    src, tgt = summary["source_metric"], summary["target_metric"]
    names = []

    grid = summary["grid"]
    series = {label: [row.get(key) or 0.0 for row in grid]
              for label, key in ((f"{tgt}, CTe = 0", tgt), (f"{tgt}, CTe = 1", f"{tgt}_cte1"), (f"{src}, CTe = 0", src))}
    names.append("wrapper.png")
    _grouped_bars(figures / names[-1], [f"{row['lr_name']}\nCTr {row['correlation']:g}" for row in grid], series,
                  "accuracy after fine-tuning", "a wrapper: right at CTe = 1, wrong at CTe = 0 (cf. Jain et al. Tables 3, 5)")

    curve = summary["pruning"]["curve"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, color in ((src, "C2"), (tgt, "C0")):
        ax.plot([row["k"] for row in curve], [row[key] for row in curve], marker="o", color=color, label=key)
    names.append("pruning.png")
    _finish_accuracy(fig, ax, figures / names[-1], f"{summary['pruning']['granularity']}s pruned (top theta x grad "
                     f"of the {src} loss)", "accuracy (CTe = 0)", f"pruning the fine-tuned model ({summary['focus']['stage']}; cf. Fig. 7)")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for model, style in (("pretrained", "--"), ("finetuned", "-")):
        for i, (target, accuracies) in enumerate(summary["probes"][model].items()):
            ax.plot(range(len(accuracies)), accuracies, style, marker="o", color=f"C{i}", label=f"{target}, {model}")
    ax.set_xticks(range(len(next(iter(summary["probes"]["pretrained"].values())))))
    names.append("probes.png")
    _finish_accuracy(fig, ax, figures / names[-1], "layer (0: embeddings, i: after block i)", "held-out probe accuracy",
                     "linear probes at the readout position (cf. Fig. 8)")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    labels = {"reverse": "reverse fine-tuning (from the focus cell)", "scratch": "from scratch",
              "swapped-ft": "swapped-operand pretraining + fine-tuning"}
    for i, (stage, revival) in enumerate(summary["revival"].items()):
        steps = [max(step, 1) for step, _ in revival["curve"]]  # step 0 drawn at 1 on the log axis
        ax.plot(steps, [value for _, value in revival["curve"]], marker=".", color=f"C{i}", label=labels.get(stage, stage))
    ax.axhline(summary["reach"], color="grey", lw=0.8, ls="--")
    ax.set_title(f"reviving {src} (cf. Fig. 9)", fontsize=9)
    _finish_log_figure(fig, ax, figures / "revival.png", "training step (step 0 drawn at 1)", f"{src} accuracy")
    names.append("revival.png")

    attention = summary["attention"]
    series = {f"{model}: onto {letter} tokens": [h[f"onto_{letter}"] for h in attention[model]]
              for model in ("pretrained", "finetuned") for letter in ("a", "b")}
    names.append("attention.png")
    _grouped_bars(figures / names[-1], [f"L{h['layer']}H{h['head']}" for h in attention["pretrained"]], series,
                  "attention mass from the readout position", "where the readout position looks (cf. the Tracr attention maps)")
    return names


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_finetune_report(path: Path, summary: dict) -> Path:
    path = Path(path)
    names = finetune_figures(path / "figures", summary)
    src, tgt = summary["source_metric"], summary["target_metric"]
    rows = "".join(
        f"<tr><td>{html.escape(r['lr_name'])} ({r['lr']:g})</td><td>{r['correlation']:g}</td>"
        + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in (tgt, f"{tgt}_cte1", src)) + "</tr>"
        for r in summary["grid"])
    text = ("<!doctype html><html><head><meta charset='utf-8'><title>caplab fine-tuning study</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px}"
            f"</style></head><body><h1>Fine-tuning study {html.escape(path.name)}</h1>"
            f"<table><tr><th>lr</th><th>CTr</th><th>{tgt} (CTe 0)</th><th>{tgt} (CTe 1)</th><th>{src}</th></tr>{rows}</table>"
            + "".join(f"<img src='figures/{n}' alt='{n}'>" for n in names)
            + f"<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre></body></html>")
    atomic_write_bytes(path / "report.html", text.encode())
    return path / "report.html"
