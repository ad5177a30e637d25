"""The figures evaluate writes beside its tables (PNG bytes): the reliability diagram of the
image-level probability and the forest plot of the subgroups. The report embeds the same files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ptxseg.util.plotting import figure_png, pyplot


def reliability_png(
    points: Mapping[str, Sequence[Mapping[str, float]]], ece: Mapping[str, float] | None = None
) -> bytes:
    """Mean probability against the observed share of positives per equal-mass bin, with the
    share's Wilson interval, for the raw score and the calibrated probability."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    styles = {"raw": ("o-", "#c44e52"), "calibrated": ("s-", "#4c72b0")}
    for kind, rows in points.items():
        if not rows:
            continue
        x = np.array([r["mean_probability"] for r in rows])
        y = np.array([r["observed"] for r in rows])
        low = np.array([r["observed_ci_low"] for r in rows])
        high = np.array([r["observed_ci_high"] for r in rows])
        style, colour = styles.get(kind, ("^-", "#55a868"))
        label = "raw score (max. probability)" if kind == "raw" else "calibrated probability"
        if ece and kind in ece and ece[kind] is not None:
            label += f", ECE {ece[kind]:.3f}"
        ax.errorbar(
            x,
            y,
            yerr=[y - low, high - y],
            fmt=style,
            color=colour,
            ms=4,
            capsize=2,
            lw=1.2,
            label=label,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed share with pneumothorax")
    ax.set_title("Reliability (equal-mass bins, 95% Wilson)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return figure_png(fig)


def forest_png(
    rows: Sequence[Mapping[str, Any]], metrics=("competition_dice", "sensitivity")
) -> bytes:
    """One line per subgroup level: the value and its 95% interval for each metric, the whole
    split's value as a dashed line; levels under the size limit grey, called-out ones bold."""
    plt = pyplot()
    rows = list(rows)
    height = max(2.5, 0.28 * len(rows) + 1.2)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.4 * len(metrics) + 2.2, height), sharey=True, squeeze=False
    )
    labels = [f"{r['variable']}: {r['value']} (n={int(r['n'])})" for r in rows]
    y = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for yi, row in zip(y, rows, strict=True):
            value, low, high = (
                row.get(metric),
                row.get(f"{metric}_ci_low"),
                row.get(f"{metric}_ci_high"),
            )
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            small = bool(row.get("flag"))
            colour = "#999999" if small else ("#c44e52" if row.get("called_out") else "#2c4f7c")
            if low is not None and high is not None:
                ax.plot([low, high], [yi, yi], color=colour, lw=1.6)
            ax.plot(
                [value],
                [yi],
                "o" if not small else "o",
                mfc="white" if small else colour,
                color=colour,
                ms=5,
            )
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels, fontsize=7)
    fig.suptitle(
        "Subgroups: value and 95% interval (grey: fewer than 10 images; red: called out "
        "after Holm)",
        fontsize=9,
    )
    fig.tight_layout()
    return figure_png(fig, dpi=90)
