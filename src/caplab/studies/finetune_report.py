"""Figures and report.html of a fine-tuning study (`caplab.studies.finetune`).

Every figure draws seed means with 95% t-intervals (error bars) where a study has several seeds,
one panel per operand prior where it has several priors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caplab.runs import html, plots


def _panels(n: int, width: float = 6.4):
    fig, axes = plots.subplots(n, 1, width=width, height=3.6 * n, squeeze=False)
    return fig, list(axes[:, 0])


def _bars(ax, categories: list[str], series: dict[str, list[dict]], ylabel: str, title: str) -> None:
    """One group of bars per category, one bar per series; each value a {"mean", "interval"}."""
    x, width = np.arange(len(categories)), 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        means = np.array([v["mean"] if v["mean"] is not None else np.nan for v in values])
        low = np.array([v["mean"] - v["interval"][0] if v["interval"] else 0.0 for v in values])
        high = np.array([v["interval"][1] - v["mean"] if v["interval"] else 0.0 for v in values])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=[low, high], capsize=2,
               label=label, color=f"C{i}")
    ax.set_xticks(x, categories, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")


def _by_prior(summary: dict) -> dict:
    """{prior label: [chains]} in the study's order."""
    out: dict[str, list] = {}
    for chain in summary["chains"]:
        out.setdefault(str(chain["prior"] or "recipe prior"), []).append(chain)
    return out


def _focus(chain: dict, summary: dict) -> dict:
    """The cell of a chain that reverse fine-tuning starts from (always pruned and probed)."""
    return next(c for c in chain["cells"] if c["base"] == summary["focus"])


def _mean_rows(rows_per_seed: list[list[dict]], key: str) -> tuple[list, np.ndarray, np.ndarray]:
    ks = [row["k"] for row in rows_per_seed[0]]
    values = np.array([[row[key] for row in rows] for rows in rows_per_seed])
    return ks, values.mean(0), values.std(0)


def finetune_figures(figures: Path, summary: dict) -> list[str]:
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    src, tgt = summary["source_metric"], summary["target_metric"]
    priors = list(dict.fromkeys(str(row["prior"] or "recipe prior") for row in summary["table"]))
    names = []

    fig, axes = _panels(len(priors), 8.0)
    for ax, prior in zip(axes, priors):
        rows = [r for r in summary["table"] if str(r["prior"] or "recipe prior") == prior]
        natural = summary["baselines"][str(rows[0]["prior"])]["natural_shortcut_rate"]["mean"]
        _bars(ax, [f"{r['lr_name']}\nCTr {r['correlation']:g}" for r in rows],
              {f"{tgt}, CTe = 0": [r[tgt] for r in rows], f"{tgt}, CTe = 1": [r[f"{tgt}_cte1"] for r in rows],
               f"{src}, CTe = 0": [r[src] for r in rows]},
              "accuracy after fine-tuning", f"prior {prior}: a wrapper is right at CTe = 1, wrong at CTe = 0 "
              f"(dashed: b = a + 1 by itself, {natural:.3f}; cf. Tables 3, 5)")
        ax.axhline(natural, color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, 1.1)
    names.append("wrapper.png")
    plots.save(fig, figures / names[-1])

    pruned = [r for r in summary["table"] if "pruning_gain" in r]
    if pruned:
        fig, axes = _panels(len(priors), 8.0)
        for ax, prior in zip(axes, priors):
            rows = [r for r in pruned if str(r["prior"] or "recipe prior") == prior]
            _bars(ax, [f"{r['lr_name']}\nCTr {r['correlation']:g}" for r in rows],
                  {"top theta x grad units": [r["pruning_gain"] for r in rows],
                   "as many random units": [r["pruning_gain_random"] for r in rows],
                   "same units, pretrained model": [r["pruning_gain_pretrained"] for r in rows]},
                  f"change of {src} at the best K", f"prior {prior}: what pruning revives, against its controls (cf. Fig. 7)")
            ax.axhline(0, color="black", lw=0.6)
        names.append("pruning_gain.png")
        plots.save(fig, figures / names[-1])

    by_prior = _by_prior(summary)
    fig, axes = _panels(len(by_prior))
    for ax, (prior, chains) in zip(axes, by_prior.items()):
        focus = [_focus(c, summary)["pruning"] for c in chains]
        for key, color in ((src, "C2"), (tgt, "C0")):
            ks, mean, std = _mean_rows([p["curve"] for p in focus], key)
            ax.errorbar(ks, mean, yerr=std, marker="o", color=color, label=f"{key}, fine-tuned, top units", capsize=2)
        for rows, style, label in (([p["random"] for p in focus], "s:", "random units"),
                                   ([p["pretrained_same_units"] for p in focus], "^--", "same units in the pretrained model"),
                                   ([c["pretrained_pruning"] for c in chains], "v-.", "pretrained, its own top units")):
            ks, mean, _ = _mean_rows(rows, src)
            ax.plot(ks, mean, style, color="C2", alpha=0.6, label=f"{src}, {label}")
        ax.set_xlabel(f"{focus[0]['granularity']}s pruned (top theta x grad of the {src} loss)")
        ax.set_ylabel("accuracy (CTe = 0)")
        ax.set_title(f"prior {prior}: pruning the focus cell {summary['focus']} (mean, sd over seeds)", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    names.append("pruning.png")
    plots.save(fig, figures / names[-1])

    fig, axes = _panels(len(by_prior))
    for ax, (prior, chains) in zip(axes, by_prior.items()):
        models = {"fine-tuned": [_focus(c, summary)["probes"] for c in chains],
                  "pretrained": [c["probes"]["pretrained"] for c in chains],
                  "untrained": [c["probes"]["untrained"] for c in chains]}
        for style, (model, probes) in zip(("-", "--", ":"), models.items()):
            for i, label in enumerate(probes[0]["accuracy"]):
                curves = np.array([p["accuracy"][label] for p in probes])
                ax.plot(range(curves.shape[1]), curves.mean(0), style, marker="o", ms=3, color=f"C{i}", label=f"{label}, {model}")
        for i, label in enumerate(models["pretrained"][0]["majority"]):
            ax.axhline(np.mean([p["majority"][label] for p in models["pretrained"]]), color=f"C{i}", lw=0.6, alpha=0.5)
        ax.set_xlabel("layer (0: embeddings, i: after block i); thin lines: majority class")
        ax.set_ylabel("held-out probe accuracy")
        ax.set_title(f"prior {prior}: linear probes at the readout position, focus cell (cf. Fig. 8)", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=3)
    names.append("probes.png")
    plots.save(fig, figures / names[-1])

    fig, ax = plots.subplots()
    labels = {"reverse": "reverse fine-tuning (from the focus cell)", "scratch": "from scratch",
              "swapped-ft": "swapped-operand pretraining + fine-tuning"}
    for chain in summary["chains"]:
        for i, (stage, revival) in enumerate(chain["revival"].items()):
            steps = [max(step, 1) for step, _ in revival["curve"]]  # step 0 drawn at 1 on the log axis
            ax.plot(steps, [value for _, value in revival["curve"]], marker=".", color=f"C{i}", alpha=0.7,
                    label=labels.get(stage, stage) if chain is summary["chains"][0] else None)
    ax.axhline(summary["reach"], color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training step (step 0 drawn at 1); one line per chain")
    ax.set_ylabel(f"{src} accuracy")
    ax.set_title(f"reviving {src} (cf. Fig. 9)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    names.append("revival.png")
    plots.save(fig, figures / names[-1])

    attention = summary["chains"][0]["attention"]
    fig, ax = plots.subplots()
    heads = [f"L{h['layer']}H{h['head']}" for h in attention["pretrained"]]
    _bars(ax, heads, {f"{model}: onto {letter} tokens": [{"mean": h[f"onto_{letter}"], "interval": None} for h in attention[model]]
                      for model in ("pretrained", "finetuned") for letter in ("a", "b")},
          "attention mass from the readout position", "where the readout position looks, first chain (cf. the Tracr attention maps)")
    names.append("attention.png")
    plots.save(fig, figures / names[-1])
    return names


def cell_text(value: dict) -> str:
    """A table entry: the mean, with its interval over seeds where there is one."""
    if value is None or value.get("mean") is None:
        return "-"
    if value.get("interval"):
        return f"{value['mean']:.3f} [{value['interval'][0]:.3f}, {value['interval'][1]:.3f}]"
    return f"{value['mean']:.3f}"


def write_finetune_report(path: Path, summary: dict) -> Path:
    path = Path(path)
    names = finetune_figures(path / "figures", summary)
    src, tgt = summary["source_metric"], summary["target_metric"]
    keys = (tgt, f"{tgt}_cte1", src, "pruning_gain", "pruning_gain_random", "pruning_gain_pretrained")
    rows = "".join(
        f"<tr><td>{html.escape(str(r['prior']))}</td><td>{html.escape(r['lr_name'])} ({r['lr']:g})</td>"
        f"<td>{r['correlation']:g}</td>" + "".join(f"<td>{cell_text(r.get(k))}</td>" for k in keys) + "</tr>"
        for r in summary["table"])
    header = "".join(f"<th>{html.escape(h)}</th>" for h in (
        "prior", "lr", "CTr", f"{tgt} (CTe 0)", f"{tgt} (CTe 1)", src, "pruning gain", "random units", "same units, pretrained"))
    body = [f"<h1>Fine-tuning study {html.escape(path.name)}</h1>",
            f"<p>Mean [95% t-interval] over {summary['seeds']} seed(s).</p>", f"<table><tr>{header}</tr>{rows}</table>",
            *html.images(names), html.json_block("Summary", {k: v for k, v in summary.items() if k != "chains"})]
    return html.write_page(path / "report.html", "caplab fine-tuning study", body)


def attention_figure(patterns, heads: list[tuple[int, int]], labels: list[str], path: Path) -> Path:
    """Heat maps of attention patterns of one sequence, one panel per (layer, head).

    Arguments:
        patterns: (len(heads), query_pos, key_pos), e.g. `attention_patterns(model, tokens, heads)[:, row]`.
        labels: one name per position (the sequence's tokens).
    """
    n = len(heads)
    fig, axes = plots.subplots(1, n, width=3.4 * n, height=3.4, squeeze=False)
    for ax, pattern, (layer, head) in zip(axes[0], patterns, heads):
        ax.imshow(np.asarray(pattern.detach().cpu().float()), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"layer {layer}, head {head}", fontsize=8)
        ax.set_xlabel("key")
    axes[0][0].set_ylabel("query")
    plots.save(fig, Path(path))
    return Path(path)
