"""Matplotlib without a display: the one place that picks the Agg backend and renders a figure to
PNG bytes, for every module that draws (evaluate's figures, the report, previews, benchmarks)."""

from __future__ import annotations

import io


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (imported on first use: `--help` stays fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()
