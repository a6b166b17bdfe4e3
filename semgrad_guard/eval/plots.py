"""PNG plots of an evaluation (matplotlib, the ``eval`` extra; Agg backend, no display needed).

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies),
and every line also differs in style, so the plots read in grey-scale too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError, MissingDependencyError
from .metrics import risk_coverage, roc_curve

OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#D55E00",  # vermillion
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError("matplotlib", "eval", "the evaluation plots") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i: int) -> dict[str, Any]:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def plot_roc(
    block: dict[str, Any], scores: dict[str, list[float]], errors: list[bool], path: Path, title: str
) -> None:
    """ROC curves of every method for detecting wrong answers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, (m, s) in enumerate(scores.items()):
        try:
            fpr, tpr = roc_curve(s, errors)
        except MetricError:
            continue
        auc = block["methods"][m]["auroc"]["value"]
        ax.plot(fpr, tpr, label=f"{m} ({auc:.3f})", linewidth=1.6, **_style(i))
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle=":", label="chance (0.500)")
    ax.set(
        xlabel="false-positive rate (right answers flagged)",
        ylabel="true-positive rate (wrong answers caught)",
    )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right", title="method (AUROC)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_risk_coverage(scores: dict[str, list[float]], errors: list[bool], path: Path, title: str) -> None:
    """Risk (error rate of kept answers) against coverage, keeping the least uncertain first."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, (m, s) in enumerate(scores.items()):
        rc = risk_coverage(s, errors)
        ax.plot(rc.coverage, rc.risk, label=f"{m} ({rc.area:.3f})", linewidth=1.6, **_style(i))
    e = np.asarray(errors, dtype=float)
    oracle = risk_coverage(e, errors)
    ax.plot(
        oracle.coverage,
        oracle.risk,
        color="#999999",
        linewidth=0.8,
        linestyle=":",
        label=f"oracle ({oracle.area:.3f})",
    )
    ax.axhline(e.mean(), color="#999999", linewidth=0.8, linestyle="--", label=f"random ({e.mean():.3f})")
    ax.set(
        xlabel="coverage (fraction of answers kept)", ylabel="risk (error rate of kept answers)", xlim=(0, 1)
    )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", title="method (AURC, lower is better)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histograms(scores: dict[str, list[float]], errors: list[bool], path: Path, title: str) -> None:
    """Per method: the score distribution of right vs wrong answers (log scale for gradient scores)."""
    plt = _pyplot()
    n = len(scores)
    cols = 3
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    e = np.asarray(errors, dtype=bool)
    for ax, (m, s) in zip(axes.flat, scores.items(), strict=False):
        v = np.asarray(s, dtype=float)
        positive = bool(np.all(v > 0)) and v.max() / max(v.min(), 1e-300) > 100
        if positive:
            v = np.log10(v)
        bins = np.histogram_bin_edges(v, bins=30)
        ax.hist(v[~e], bins=bins, alpha=0.6, color=OKABE_ITO[0], label="right", density=True)
        ax.hist(v[e], bins=bins, alpha=0.6, color=OKABE_ITO[4], label="wrong", density=True, hatch="//")
        ax.set_title(m + (" (log10)" if positive else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(block: dict[str, Any], path: Path, title: str) -> None:
    """AUROC (with 95% interval) against wall time per answer, one marker per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (m, row) in enumerate(block["methods"].items()):
        a = row["auroc"]
        if a.get("value") is None:
            continue
        x = row["cost"]["seconds"]
        yerr = None
        if a.get("low") is not None:
            yerr = [[a["value"] - a["low"]], [a["high"] - a["value"]]]
        ax.errorbar(
            [x],
            [a["value"]],
            yerr=yerr,
            fmt=MARKERS[i % len(MARKERS)],
            color=OKABE_ITO[i % len(OKABE_ITO)],
            label=m,
            capsize=3,
            markersize=7,
        )
    ax.set_xscale("log")
    ax.axhline(0.5, color="#999999", linewidth=0.8, linestyle=":")
    ax.set(xlabel="wall time per answer, s (log; answer included)", ylabel="AUROC (error detection)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
