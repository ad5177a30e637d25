"""Commands: dicomweb, listen, repair-uids (radiology integration)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import MODEL, READ, WALKED, Out, guarded
from ptxseg.integration.pacs_terminal import (
    print_error,
    quiet_pacs_libraries,
    stop_on_signals,
    timestamped_reporter,
)

PACS_EXTRA = "pip install 'ptxseg[pacs]' (dicomweb-client and pynetdicom)"


def _analyzer(spec, max_megapixels: float):
    """The analyser of the model options' spec (int8 only as a file made by `ptxseg export
    --int8`: there are no images to check it on)."""
    from ptxseg.inference.choice import ChoiceHooks, build_predictor
    from ptxseg.integration.analysis import Analyzer

    predictor = build_predictor(spec, ChoiceHooks(int8_on_the_fly=False))
    return Analyzer.for_model(predictor, int(max_megapixels * 1e6))


def _positive(value: float, option: str, example: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{option} {value:g}: expected a positive number, e.g. {example}")
    return value


@app.command(rich_help_panel="Serving and PACS")
@guarded(inputs={"checkpoint": MODEL})
def dicomweb(
    url: str = typer.Option(..., help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."),
    checkpoint: Path = options.CHECKPOINT,
    study: list[str] = typer.Option(
        None, "--study", help="Study Instance UID to process (repeatable)."
    ),
    new: bool = typer.Option(
        False, "--new", help="Process every study with CR or DX images that lack a result."
    ),
    watch: float | None = typer.Option(
        None, "--watch", help="Repeat every SECONDS until Ctrl-C (new images are picked up)."
    ),
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
    device: str = options.DEVICE,
    tta: str | None = options.TTA,
    operating_point: str | None = options.OPERATING_POINT,
    batch_size: int = typer.Option(4, min=1, help="Images retrieved and segmented together."),
    max_megapixels: float = options.MAX_MEGAPIXELS,
) -> None:
    """Segment CR/DX images in a DICOMweb PACS and store a SEG (positives) and an SR (all) back.

    Only images without this model's result are processed, so a rerun stores nothing new, and a
    run that lost the server (exit 1) is finished by running it again. Credentials come from the
    environment, never from the command line or the URL: PTXSEG_DICOMWEB_TOKEN (bearer token),
    or PTXSEG_DICOMWEB_USER and PTXSEG_DICOMWEB_PASSWORD (basic authentication).

    Example: ptxseg dicomweb --url http://127.0.0.1:8042/dicom-web -c best.ckpt --new
    """
    from rich.console import Console

    console = Console(stderr=True)
    if bool(study) == new:
        raise typer.BadParameter("give --study UID (repeatable) or --new, not both and not none")
    if watch is not None and watch <= 0:
        raise typer.BadParameter(f"--watch {watch}: expected a positive number of seconds")
    try:
        from ptxseg.integration import dicomweb as dw
    except ImportError as err:
        print_error(console, f"{err}; {PACS_EXTRA}")
        raise typer.Exit(2) from None
    secrets = dw.Secrets()
    quiet_pacs_libraries()
    try:
        client = dw.make_client(url)
        spec = options.predictor_spec(
            checkpoint, runtime, precision, device, tta, batch_size, operating_point
        )
        analyzer = _analyzer(spec, max_megapixels)
    except (dw.DicomwebError, ValueError, FileNotFoundError, ImportError) as err:
        print_error(console, f"{err}", secrets.scrub)
        raise typer.Exit(2) from None
    stop = threading.Event()
    if watch is not None:
        stop_on_signals(stop)
    studies = list(study) if study else None
    report = timestamped_reporter(console, secrets.scrub)
    code = dw.process(client, url, analyzer, studies, batch_size, report, watch, stop)
    if code:
        raise typer.Exit(code)


@app.command(rich_help_panel="Serving and PACS")
@guarded(
    inputs={"checkpoint": MODEL},
    outputs={
        "spool": Out(owns=("incoming", "outbox", "failed", "lock", "status.json"), lock=False)
    },
)
def listen(
    checkpoint: Path = options.CHECKPOINT,
    send_to: str = typer.Option(
        ..., "--send-to", help="Where SEG and SR go: AET@HOST:PORT, e.g. ORTHANC@pacs:4242."
    ),
    port: int = typer.Option(11112, help="DICOM port to listen on."),
    ae_title: str = typer.Option("PTXSEG", "--ae-title", help="This receiver's AE title."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0 accepts images from the network)."
    ),
    spool: Path | None = typer.Option(
        None,
        help="Folder that keeps received images until their results are delivered (default: "
        "$XDG_STATE_HOME or ~/.local/state, then ptxseg/listen/AETITLE-PORT).",
    ),
    spool_max_gb: float = typer.Option(
        20.0, help="Spool size limit; beyond it C-STOREs get Out of Resources (0xA700)."
    ),
    retry_for: str = typer.Option(
        "24h",
        help="How long undelivered results are retried before they go to failed/ "
        "(e.g. 24h, 90m, 3600s).",
    ),
    accept_secondary_capture: bool = typer.Option(
        False,
        "--accept-secondary-capture",
        help="Also accept Secondary Capture images whose Modality is CR or DX (archives such as "
        "SIIM's); by default only the CR and DX SOP classes are accepted.",
    ),
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
    device: str = options.DEVICE,
    tta: str | None = options.TTA,
    operating_point: str | None = options.OPERATING_POINT,
    batch_size: int = typer.Option(4, min=1, help="Queued images segmented together at most."),
    max_megapixels: float = options.MAX_MEGAPIXELS,
) -> None:
    """Receive images by DICOM C-STORE, segment CR/DX ones, send SEG (positives) and SR onward.

    Each image is on disk in the spool before its C-STORE is answered Success, and leaves it only
    once its results are delivered (or moves to failed/ with a reason): a crash, a restart or a
    destination that is down loses nothing. C-ECHO is answered. Ctrl-C stops after the current
    step; what is left is taken up at the next start. `ptxseg listen-status` shows the spool.

    Example: ptxseg listen -c best.ckpt --port 11112 --send-to ORTHANC@127.0.0.1:4242
    """
    from rich.console import Console

    console = Console(stderr=True)
    try:
        from ptxseg.integration.dimse import (
            CannotListen,
            Listener,
            ListenerSettings,
            check_ae_title,
            parse_destination,
            parse_duration,
            run_listener,
        )
        from ptxseg.integration.spool import Spool, SpoolBusy, default_spool
    except ImportError as err:
        print_error(console, f"{err}; {PACS_EXTRA}")
        raise typer.Exit(2) from None
    try:
        destination = parse_destination(send_to)
        check_ae_title(ae_title)
        retry_seconds = parse_duration(retry_for, "--retry-for")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    _positive(spool_max_gb, "--spool-max-gb", "20")
    folder = spool or default_spool(ae_title, port)
    store = Spool(folder, max_bytes=int(spool_max_gb * 1e9))
    try:
        store.open(owner=f"{ae_title} on {host}:{port}")
    except SpoolBusy as err:
        print_error(console, str(err))
        raise typer.Exit(2) from None
    except OSError as err:
        print_error(console, f"cannot use {folder} as the spool: {err}; give a writable --spool")
        raise typer.Exit(2) from None
    quiet_pacs_libraries()
    try:
        spec = options.predictor_spec(
            checkpoint, runtime, precision, device, tta, batch_size, operating_point
        )
        analyzer = _analyzer(spec, max_megapixels)
    except (ValueError, FileNotFoundError, ImportError) as err:
        store.close()
        print_error(console, f"{err}")
        raise typer.Exit(2) from None
    report = timestamped_reporter(console)
    if analyzer.predictor.path_choice:  # None for a Predictor built without the choice
        report(f"path: {analyzer.predictor.path_choice['line']}")
    listener = Listener(
        analyzer,
        destination,
        store,
        ListenerSettings(
            ae_title=ae_title,
            host=host,
            port=port,
            batch_size=batch_size,
            retry_for=retry_seconds,
            secondary_capture=accept_secondary_capture,
        ),
        report=report,
    )
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        run_listener(listener, stop)
    except CannotListen as err:
        print_error(console, str(err))
        raise typer.Exit(2) from None


@app.command("listen-status", rich_help_panel="Serving and PACS")
@guarded(inputs={"spool": READ})
def listen_status(
    spool: Path | None = typer.Argument(
        None, help="The listener's spool (default: the one `listen` uses for --ae-title/--port)."
    ),
    ae_title: str = typer.Option(
        "PTXSEG", "--ae-title", help="Listener's AE title (default spool)."
    ),
    port: int = typer.Option(11112, help="Listener's port (default spool)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    failed: int = typer.Option(10, help="List the reasons of this many newest failed items."),
) -> None:
    """Show a listener's spool: queued, pending delivery and failed items (no model needed).

    Example: ptxseg listen-status ~/.local/state/ptxseg/listen/PTXSEG-11112
    """
    from ptxseg.integration.spool import Spool, default_spool, is_spool
    from ptxseg.integration.status import render_status, spool_status

    folder = spool or default_spool(ae_title, port)
    if not is_spool(folder):
        fail(
            f"{folder} is not a listener's spool (it has no incoming/, outbox/ and failed/): "
            "give the folder that `ptxseg listen --spool` uses, or its --ae-title and --port"
        )
    try:
        status = spool_status(Spool(folder), failed)
    except OSError as err:
        fail(f"cannot read the spool {folder}: {err}")
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    else:
        typer.echo(render_status(status))


def _copies(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    from ptxseg.data.uids import repair_targets

    try:
        return repair_targets(inputs, out)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _no_copy_over_its_source(params) -> None:
    from ptxseg.util import path_guard

    files = _copies(params["inputs"], params["out"])
    path_guard.check_targets([params["out"] / name for _, name in files], [p for p, _ in files])


@app.command("repair-uids", rich_help_panel="Serving and PACS")
@guarded(inputs={"inputs": WALKED}, outputs={"out": Out(owns=())}, check=_no_copy_over_its_source)
def repair_uids_command(
    inputs: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the repaired copies."),
) -> None:
    """Copy DICOMs with valid UIDs (SIIM stage-2 files have empty Study/Series UIDs, which a PACS
    refuses). Same name under --out; deterministic: the same file always gets the same UIDs.
    --out may lie inside an input folder (the search skips it); it may not be an input.

    Example: ptxseg repair-uids siim/stage_2_images --out repaired/
    """
    from ptxseg.cli import errors
    from ptxseg.data.uids import repair_copies

    files = _copies(inputs, out)  # none is its own copy (checked before --out was locked)
    repaired, failed = repair_copies(files, out)  # an unwritable output: one line, exit 1
    for line in errors.summarise_failures(failed, where="the lines above"):
        typer.echo(f"error: {line}", err=True)
    typer.echo(
        f"copied {len(files) - len(failed)} files to {out}; {repaired} had UIDs repaired"
        + (f"; {len(failed)} could not be read" if failed else "")
    )
    if failed:
        raise typer.Exit(1)
