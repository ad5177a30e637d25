"""Commands: serve, load-test."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app
from ptxseg.cli.guarded import MODEL, READ, TABLES, Out, guarded


@app.command(rich_help_panel="Serving and PACS")
@guarded(
    inputs={"checkpoint": MODEL},
    outputs={"keep_uploads": Out(owns=("upload-*",), lock=False)},
)
def serve(
    checkpoint: list[Path] = options.CHECKPOINTS,
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; 0.0.0.0 exposes the service to the network."
    ),
    port: int = typer.Option(8000, help="TCP port."),
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
    device: str = options.DEVICE,
    tta: str | None = options.TTA,
    operating_point: str | None = options.OPERATING_POINT,
    workers: int = typer.Option(
        1, min=1, help="Inference threads: how many images are analysed at the same time."
    ),
    max_upload_mb: float = typer.Option(
        50.0, min=0.001, help="Largest accepted upload in MB; larger ones get HTTP 413."
    ),
    max_megapixels: float = typer.Option(
        60.0,
        min=0.001,
        help="Largest image a header may claim, in megapixels; larger ones get HTTP 413 "
        "before any decoding (decompression bombs).",
    ),
    keep_uploads: Path | None = typer.Option(
        None,
        help="Keep a copy of each upload here, named by request id, readable by this user only "
        "(default: keep nothing). Checked for writing at start.",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Another Host name the service answers (repeatable), e.g. the name a reverse proxy "
        "or the clinic's DNS gives it. Without it: the address it listens on (with "
        "127.0.0.1, localhost and [::1] for loopback; this machine's names for 0.0.0.0).",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve the model over HTTP: the page at /, the API at /v1 (research use only)."""
    import logging

    import uvicorn

    from ptxseg.serving.webapp import ServeSettings, load_app, startup_warnings

    # Checked before the model loads: a wrong option costs a second, not a model load.
    try:
        warnings = startup_warnings(host, allowed_host, keep_uploads)
    except ValueError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    for warning in warnings:
        typer.secho(warning, fg="yellow", err=True)
    settings = ServeSettings(
        max_upload_mb=max_upload_mb,
        max_megapixels=max_megapixels,
        workers=workers,
        keep_uploads=keep_uploads,
        host=host,
        allowed_hosts=tuple(allowed_host),
    )
    try:
        spec = options.predictor_spec(
            checkpoint, runtime, precision, device, tta, operating_point=operating_point
        )
        application = load_app(spec, settings)
    except (FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    path = settings.model_card.get("runtime", {}).get("choice")
    if path:
        typer.echo(f"path: {path}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    typer.echo(f"ptxseg: model loaded; open http://{shown}:{port}/ (API schema: /openapi.json)")
    # access_log off: uvicorn's lines add nothing to ours, which carry request ids and hashes.
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@app.command("load-test", rich_help_panel="Benchmarks")
@guarded(inputs={"file": READ}, outputs={"out": TABLES})
def load_test(
    url: str = typer.Option("http://127.0.0.1:8000", help="The running `ptxseg serve` (local)."),
    file: Path = typer.Option(..., "--file", "-f", help="The DICOM, PNG or JPEG to send."),
    clients: str = typer.Option(
        "4", help="Concurrent clients, or a list such as 1,2,4 measured one after the other."
    ),
    duration: float = typer.Option(10.0, min=0.1, help="Seconds to keep sending."),
    max_requests: int | None = typer.Option(
        None, min=1, help="Stop each client count after this many requests (default: no limit)."
    ),
    include: str = typer.Option(
        "none", help="Parts to ask for (see POST /v1/predict); none = findings and RLE only."
    ),
    out: Path = typer.Option(
        Path("load-test"), "--out", "-o", help="Folder for load-test.md and load-test.csv."
    ),
) -> None:
    """Send one file from N concurrent clients to a local server; report throughput and latency."""
    from ptxseg.benchmarks.load import LoadTestError, run_load_test, write_load_report

    try:
        result = run_load_test(url, file, clients, duration, max_requests, include)
    except LoadTestError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    table = write_load_report(result, out)
    typer.echo(table)
    typer.echo(f"written: {out / 'load-test.md'}, {out / 'load-test.csv'}")
    if result.errors or result.mismatches:
        typer.secho(
            f"{result.errors} failed request(s), {result.mismatches} answer(s) that differ "
            "from the reference",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
