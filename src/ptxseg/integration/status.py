"""`ptxseg listen-status`: what a listener's spool holds, read from the folders themselves.

The counts come from the spool's folders (true even when the listener is not running or died);
`status.json` adds what only the listener knows (its destination, its last delivery error, when it
tries next). Nothing here needs a model, pynetdicom or the destination.
"""

from __future__ import annotations

import time
from typing import Any

from ptxseg.integration.spool import Spool, iter_reasons, receipt_ref, tree_size


def spool_status(spool: Spool, failed: int = 10, now: float | None = None) -> dict[str, Any]:
    """The spool's state as a JSON-ready dict; `failed` newest failure reasons are included."""
    now = time.time() if now is None else now
    counts = spool.counts()
    listener = spool.read_status()
    running = spool.locked()
    return {
        "spool": str(spool.root),
        "listener_running": running,
        "listener": listener,
        "status_age_s": round(now - listener["updated"], 1) if "updated" in listener else None,
        "queued": counts.queued,
        "pending_delivery": counts.pending,
        "failed": counts.failed,
        "oldest_queued_age_s": age(counts.oldest_queued, now),
        "oldest_pending_age_s": age(counts.oldest_pending, now),
        "used_bytes": tree_size(spool.root),
        "failures": [
            {"receipt": receipt, "image": receipt_ref(receipt), "reason": reason.strip()}
            for receipt, reason in iter_reasons(spool, failed)
        ],
    }


def age(moment: float | None, now: float) -> float | None:
    return None if moment is None else round(max(0.0, now - moment), 1)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(status: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    info = status["listener"]
    lines = [f"spool: {status['spool']}"]
    if status["listener_running"]:
        lines.append(
            f"listener: running (pid {info.get('pid', '?')}, {info.get('ae_title', '?')} on "
            f"{info.get('address', '?')}, sending to {info.get('destination', '?')}; status "
            f"written {ago(status['status_age_s'])} ago)"
        )
    else:
        lines.append("listener: not running (what the spool holds is taken up at its next start)")
    queued = f"queued for analysis: {status['queued']}"
    if status["queued"]:
        queued += f" (oldest received {ago(status['oldest_queued_age_s'])} ago)"
    lines.append(queued)
    pending = f"pending delivery: {status['pending_delivery']}"
    if status["pending_delivery"]:
        pending += f" (oldest received {ago(status['oldest_pending_age_s'])} ago)"
        if info.get("last_delivery_error"):
            pending += f"; last error: {info['last_delivery_error']}"
    lines.append(pending)
    lines.append(
        f"failed: {status['failed']}"
        + (
            f" (each folder in {status['spool']}/failed holds the image and reason.txt)"
            if status["failed"]
            else ""
        )  # fmt: skip
    )
    for item in status["failures"]:
        said = item["reason"].splitlines() or ["(no reason.txt)"]
        lines.append(f"  {item['receipt']}: {said[0]}: {said[-1]}")
    limit = info.get("max_bytes")
    used = f"{status['used_bytes'] / 1e6:.1f} MB"
    lines.append(f"size: {used}" + (f" of {limit / 1e9:g} GB (--spool-max-gb)" if limit else ""))
    return "\n".join(lines)
