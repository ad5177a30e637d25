"""The small HTML pieces every report section is built of: escaped text, tables, inline images,
notes about what is missing."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ptxseg.reporting import plots


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def table(headers: list[str], rows: list[list], left: int = 1, text_cols: int = 0) -> str:
    """An HTML table; the first `left` and the last `text_cols` columns are left-aligned."""

    def align(i: int) -> str:
        return "l" if i < left or i >= len(headers) - text_cols else ""

    head = "".join(f'<th class="{align(i)}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{align(i)}">{c if isinstance(c, Raw) else esc(fmt(c))}</td>'
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


class Raw(str):
    """Trusted HTML (already escaped) for a table cell."""


def img(png: bytes, alt: str) -> str:
    return f'<img src="{plots.data_uri(png)}" alt="{esc(alt)}">'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def png_file(path: Path, alt: str) -> str:
    return (
        img(path.read_bytes(), alt)
        if path.is_file()
        else missing(f"no {path.name} in {path.parent}")
    )
