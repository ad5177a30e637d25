"""Load test for a local `ptxseg serve`: N concurrent clients send one file for a bounded time.

It measures what a user of the service feels (requests per second, latency percentiles, errors)
and checks correctness under load: every answer's findings must equal those of a reference
request made before the timed run. Several client counts run one after the other in one call, so
their rows compare on the same machine state. Only a server on this machine can be targeted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ptxseg.benchmarks.common import add_ratios, rows_to_markdown, write_table

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COLUMNS = {
    name: name
    for name in (
        "clients",
        "requests",
        "ok",
        "errors",
        "mismatches",
        "seconds",
        "requests_per_s",
        "speedup",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "error_kinds",
    )
}
REQUEST_TIMEOUT_S = 120.0


class LoadTestError(ValueError):
    """The load test cannot start: wrong target, missing file, no server, bad reference answer."""


@dataclass
class LoadTestResult:
    """One client count's outcome."""

    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    mismatches: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    def row(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=float)

        def pct(q: float) -> float | None:
            return round(float(np.percentile(lat, q)), 1) if lat.size else None

        return {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "mismatches": self.mismatches,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else None,
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "max_ms": round(float(lat.max()), 1) if lat.size else None,
            "error_kinds": "; ".join(f"{k}: {n}" for k, n in sorted(self.errors.items())),
        }


@dataclass
class LoadTestReport:
    """All rows of one load-test call, with what was tested."""

    url: str
    file: str
    file_bytes: int
    include: str
    server: dict[str, Any]
    reference: dict[str, Any]
    results: list[LoadTestResult]

    @property
    def errors(self) -> int:
        return sum(sum(r.errors.values()) for r in self.results)

    @property
    def mismatches(self) -> int:
        return sum(r.mismatches for r in self.results)


def check_local_url(url: str) -> httpx.URL:
    """The parsed URL when it points at this machine; LoadTestError for anything else."""
    try:
        parsed = httpx.URL(url)
    except Exception as err:
        raise LoadTestError(f"--url {url!r} is not a URL: {err}") from None
    if parsed.scheme not in ("http", "https") or parsed.host not in LOCAL_HOSTS:
        raise LoadTestError(
            f"--url {url!r}: the load test only targets a server on this machine "
            f"(http://127.0.0.1:PORT or http://localhost:PORT), never another host"
        )
    return parsed


def parse_clients(text: str | int) -> list[int]:
    """`4` or `1,2,4` -> [4] or [1, 2, 4]; each a positive whole number."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise LoadTestError(f"--clients {text!r}: expected a positive number or a list like 1,2,4")
    return [int(p) for p in parts]


async def _post(client: httpx.AsyncClient, url: str, data: bytes, include: str):
    files = {"file": ("image", data, "application/octet-stream")}
    return await client.post(url, files=files, params={"include": include})


@dataclass(frozen=True)
class LoadPlan:
    """What one load test sends, where, and for how long at each client count."""

    url: httpx.URL
    data: bytes
    client_counts: list[int]
    duration: float
    max_requests: int | None
    include: str

    @property
    def endpoint(self) -> str:
        return str(self.url.join("/v1/predict"))


async def _run_one(
    client: httpx.AsyncClient,
    plan: LoadPlan,
    reference: dict[str, Any],
    clients: int,
    progress=None,
) -> LoadTestResult:
    result = LoadTestResult(clients=clients)
    start = time.perf_counter()
    deadline = start + plan.duration
    endpoint, data, include, max_requests = (
        plan.endpoint,
        plan.data,
        plan.include,
        plan.max_requests,
    )
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.perf_counter() < deadline and (max_requests is None or sent < max_requests):
            sent += 1
            t0 = time.perf_counter()
            try:
                response = await _post(client, endpoint, data, include)
            except httpx.HTTPError as err:
                result.errors[type(err).__name__] += 1
                continue
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if response.status_code != 200:
                result.errors[f"HTTP {response.status_code}"] += 1
                continue
            result.latencies_ms.append(elapsed_ms)
            if response.json().get("findings") != reference:
                result.mismatches += 1
            if progress is not None:
                progress()

    await asyncio.gather(*(worker() for _ in range(clients)))
    result.seconds = time.perf_counter() - start
    return result


async def _load_test(plan: LoadPlan, progress=None) -> tuple[dict, dict, list[LoadTestResult]]:
    url = plan.url
    limits = httpx.Limits(max_connections=max(plan.client_counts), max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        try:
            server = (await client.get(str(url.join("/v1/model")))).json()
            first = await _post(client, plan.endpoint, plan.data, plan.include)
        except httpx.HTTPError as err:
            raise LoadTestError(
                f"no ptxseg server answers at {url} ({type(err).__name__}): start it with "
                "`ptxseg serve --checkpoint CKPT` first"
            ) from None
        if first.status_code != 200:
            detail = first.json().get("detail", first.text[:200]) if first.content else ""
            raise LoadTestError(
                f"the reference request was refused with HTTP {first.status_code}: {detail}"
            )
        reference = first.json()["findings"]
        results = []
        for clients in plan.client_counts:
            tick = progress(clients) if progress else None
            results.append(await _run_one(client, plan, reference, clients, tick))
    return server, reference, results


def run_load_test(
    url: str,
    file: str | Path,
    clients: str | int = 4,
    duration: float = 10.0,
    max_requests: int | None = None,
    include: str = "none",
    show_progress: bool = True,
) -> LoadTestReport:
    """Run the load test for each client count in `clients` (e.g. 4 or "1,2,4")."""
    parsed = check_local_url(url)
    counts = parse_clients(clients)
    if duration <= 0:
        raise LoadTestError(f"--duration {duration}: expected a positive number of seconds")
    path = Path(file)
    if not path.is_file():
        raise LoadTestError(f"--file {path}: file not found; give a DICOM, PNG or JPEG to send")
    data = path.read_bytes()
    plan = LoadPlan(parsed, data, counts, duration, max_requests, include)
    if show_progress:
        server, reference, results = _with_progress(plan)
    else:
        server, reference, results = asyncio.run(_load_test(plan))
    return LoadTestReport(
        url=str(parsed),
        file=path.name,
        file_bytes=len(data),
        include=include,
        server=server,
        reference=reference,
        results=results,
    )


def _with_progress(plan: LoadPlan):
    from ptxseg.util.progress import progress_bar

    with progress_bar(transient=True, elapsed=True) as bar:

        def progress(clients: int):
            task = bar.add_task(f"{clients} client(s)", total=plan.max_requests)

            def tick() -> None:
                bar.advance(task)

            return tick

        return asyncio.run(_load_test(plan, progress))


def _model_line(report: LoadTestReport) -> str:
    card = report.server or {}
    runtime = card.get("runtime") or {}
    model = ", ".join(
        str(v)
        for v in (
            card.get("encoder"),
            "x".join(map(str, card.get("input_size") or [])) or None,
            runtime.get("runtime"),
            runtime.get("precision"),
            runtime.get("device"),
        )
        if v
    )
    return (
        f"Load test of {report.url} with {report.file} ({report.file_bytes} bytes), "
        f"include={report.include}; model: {model or 'unknown'}. "
        "Findings compared with a reference request made before the timed run."
    )


def report_rows(report: LoadTestReport) -> list[dict[str, Any]]:
    """One row per client count, with the throughput ratio to the fewest clients."""
    rows = [result.row() for result in report.results]
    fewest = min((r["clients"] for r in rows), default=None)
    add_ratios(rows, "requests_per_s", lambda r: r["clients"] == fewest)
    return rows


def markdown_table(report: LoadTestReport) -> str:
    """The rows as a Markdown table, under a line saying what was tested."""
    return _model_line(report) + "\n\n" + rows_to_markdown(report_rows(report), COLUMNS)


def write_load_report(report: LoadTestReport, out: str | Path) -> str:
    """Write load-test.md and load-test.csv into `out` (atomically); return the table."""
    rows = report_rows(report)
    write_table(
        out,
        "load-test",
        "Load test of ptxseg serve",
        COLUMNS,
        rows,
        baseline=f"{rows[0]['clients'] if rows else '-'} client(s) (column x fewest clients)",
        notes=_model_line(report),
    )
    return markdown_table(report)
