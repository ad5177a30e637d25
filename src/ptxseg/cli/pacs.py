"""Commands: dicomweb, listen, repair-uids (radiology integration)."""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app
from ptxseg.cli.guarded import MODEL, WALKED, Out, guarded

PACS_EXTRA = "pip install 'ptxseg[pacs]' (dicomweb-client and pynetdicom)"


def _analyzer(
    checkpoint: Path, runtime: str, precision: str, device: str, batch_size: int, tta: str | None
):
    from ptxseg.inference.predictor import Predictor
    from ptxseg.integration.analysis import Analyzer

    predictor = Predictor(
        checkpoint,
        runtime=runtime,
        device=device,
        precision=precision,
        batch_size=batch_size,
        tta=tta,
    )
    return Analyzer.from_checkpoint(predictor, checkpoint)


def _quiet_libraries() -> None:
    """Library warnings quote header values verbatim (identifiers); the findings carry them."""
    for name in ("pydicom", "highdicom", "pynetdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)\..*")
    from ptxseg.data.dicom import DicomHeaderWarning
    from ptxseg.inference.seg import InvalidSourceUIDWarning

    warnings.filterwarnings("ignore", category=DicomHeaderWarning)
    warnings.filterwarnings("ignore", category=InvalidSourceUIDWarning)


def _error(console, text: str) -> None:
    from rich.text import Text

    console.print(Text("error: ", style="red") + Text(text), soft_wrap=True)


def _reporter(console):
    """Log lines with the time, unwrapped and without rich markup (they quote server text)."""
    import datetime

    def report(line: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        console.print(f"{stamp} {line}", markup=False, highlight=False, soft_wrap=True)

    return report


def _stop_on_signals(stop: threading.Event) -> None:
    """Ctrl-C or SIGTERM ends the loop after the current step; a second one ends it at once."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


@app.command()
@guarded(inputs={"checkpoint": MODEL})
def dicomweb(
    url: str = typer.Option(..., help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=options.CHECKPOINT_HELP),
    study: list[str] = typer.Option(
        None, "--study", help="Study Instance UID to process (repeatable)."
    ),
    new: bool = typer.Option(
        False, "--new", help="Process every study with CR or DX images that lack a result."
    ),
    watch: float | None = typer.Option(
        None, "--watch", help="Repeat every SECONDS until Ctrl-C (new images are picked up)."
    ),
    runtime: str = typer.Option("torch", help="torch, onnxruntime or openvino."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or int8."),
    device: str = typer.Option("cpu", help="cpu or cuda (torch runtime)."),
    tta: str | None = options.TTA,
    batch_size: int = typer.Option(4, min=1, help="Images retrieved and segmented together."),
) -> None:
    """Segment CR/DX images in a DICOMweb PACS and store a SEG (positives) and an SR (all) back.

    Only images without this model's result are processed, so a rerun stores nothing new.
    Credentials come from the environment, never from the command line: PTXSEG_DICOMWEB_TOKEN
    (bearer token), or PTXSEG_DICOMWEB_USER and PTXSEG_DICOMWEB_PASSWORD (basic authentication).

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
        _error(console, f"{err}; {PACS_EXTRA}")
        raise typer.Exit(2) from None
    _quiet_libraries()
    try:
        client = dw.make_client(url)
        analyzer = _analyzer(checkpoint, runtime, precision, device, batch_size, tta)
    except (dw.DicomwebError, ValueError, FileNotFoundError, ImportError) as err:
        _error(console, f"{err}")
        raise typer.Exit(2) from None
    report = _reporter(console)
    op, tta = analyzer.predictor.operating_point.describe(), analyzer.predictor.tta
    report(f"{url}: {analyzer.model_name}, operating point {op}, TTA {tta}")
    studies = list(study) if study else None
    if watch is not None:
        stop = threading.Event()
        _stop_on_signals(stop)
        dw.watch(
            client,
            analyzer,
            studies,
            watch,
            batch_size,
            report=report,
            should_stop=stop.is_set,
            sleep=lambda s: stop.wait(s),
        )
        return
    try:
        summary = dw.run_pass(client, analyzer, studies, batch_size, report=report)
    except dw.DicomwebError as err:
        report(f"error: {err}")
        raise typer.Exit(2) from None
    report(summary.line())
    if summary.errors:
        raise typer.Exit(1)


@app.command()
@guarded(inputs={"checkpoint": MODEL})
def listen(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=options.CHECKPOINT_HELP),
    send_to: str = typer.Option(
        ..., "--send-to", help="Where SEG and SR go: AET@HOST:PORT, e.g. ORTHANC@pacs:4242."
    ),
    port: int = typer.Option(11112, help="DICOM port to listen on."),
    ae_title: str = typer.Option("PTXSEG", "--ae-title", help="This receiver's AE title."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0 accepts images from the network)."
    ),
    queue_size: int = typer.Option(16, help="Images waiting at most; more are refused (0xA700)."),
    runtime: str = typer.Option("torch", help="torch, onnxruntime or openvino."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or int8."),
    device: str = typer.Option("cpu", help="cpu or cuda (torch runtime)."),
    tta: str | None = options.TTA,
    batch_size: int = typer.Option(4, min=1, help="Queued images segmented together at most."),
) -> None:
    """Receive images by DICOM C-STORE, segment CR/DX ones, send SEG (positives) and SR onward.

    C-ECHO is answered. Stop with Ctrl-C: queued images are finished first (twice: at once).

    Example: ptxseg listen -c best.ckpt --port 11112 --send-to ORTHANC@127.0.0.1:4242
    """
    from rich.console import Console

    console = Console(stderr=True)
    try:
        from ptxseg.integration.dimse import Listener, check_ae_title, parse_destination
    except ImportError as err:
        _error(console, f"{err}; {PACS_EXTRA}")
        raise typer.Exit(2) from None
    try:
        destination = parse_destination(send_to)
        check_ae_title(ae_title)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    _quiet_libraries()
    try:
        analyzer = _analyzer(checkpoint, runtime, precision, device, batch_size, tta)
    except (ValueError, FileNotFoundError, ImportError) as err:
        _error(console, f"{err}")
        raise typer.Exit(2) from None
    report = _reporter(console)
    listener = Listener(
        analyzer,
        destination,
        ae_title=ae_title,
        host=host,
        port=port,
        queue_size=queue_size,
        batch_size=batch_size,
        report=report,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        listener.start()
    except OSError as err:
        _error(console, f"cannot listen on {host}:{port}: {err}")
        raise typer.Exit(2) from None
    report(
        f"listening on {host}:{port} as {ae_title}; {analyzer.model_name}; SEG and SR go to "
        f"{destination}. Ctrl-C stops."
    )
    stop.wait()
    report("stopping: finishing queued images")
    listener.stop()
    s = listener.stats
    report(
        f"received {s.received}, analysed {s.analysed}, sent {s.sent}, ignored {s.ignored}, "
        f"refused {s.refused}, failed {s.failed}"
    )


def _copies(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(DICOM, name of its copy under --out) for repair-uids: folders are searched (not --out)."""
    from ptxseg import guard

    files: list[tuple[Path, Path]] = []
    for raw in inputs:
        if raw.is_dir():
            files += [(p, p.relative_to(raw)) for p in guard.walk(raw, (".dcm",), skip=[out])]
        elif raw.is_file():
            files.append((raw, Path(raw.name)))
        else:
            raise typer.BadParameter(f"{raw} does not exist: expected a DICOM file or a folder")
    return files


def _no_copy_over_its_source(params) -> None:
    from ptxseg import guard

    files = _copies(params["inputs"], params["out"])
    guard.check_targets([params["out"] / name for _, name in files], [p for p, _ in files])


@app.command("repair-uids")
@guarded(inputs={"inputs": WALKED}, outputs={"out": Out(owns=())}, check=_no_copy_over_its_source)
def repair_uids(
    inputs: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the repaired copies."),
) -> None:
    """Copy DICOMs with valid UIDs (SIIM stage-2 files have empty Study/Series UIDs, which a PACS
    refuses). Same name under --out; deterministic: the same file always gets the same UIDs.
    --out may lie inside an input folder (the search skips it); it may not be an input.

    Example: ptxseg repair-uids siim/stage_2_images --out repaired/
    """
    from ptxseg import guard
    from ptxseg.cli import errors
    from ptxseg.data.uids import repair_file

    files = _copies(inputs, out)  # none is its own copy (checked before --out was locked)
    repaired, failed = 0, []
    for source, relative in files:
        try:
            notes = repair_file(source, out / relative)
        except OSError as err:
            if err.filename and guard.is_inside(guard.real(err.filename), guard.real(out)):
                raise  # the output cannot be written: one line, exit 1
            failed.append((str(source), f"{type(err).__name__}: {err}"))
            continue
        except Exception as err:  # noqa: BLE001 - report and go on
            failed.append((str(source), f"{type(err).__name__}: {err}"))
            continue
        repaired += bool(notes)
    for line in errors.summarise(failed, where="the lines above"):
        typer.echo(f"error: {line}", err=True)
    typer.echo(
        f"copied {len(files) - len(failed)} files to {out}; {repaired} had UIDs repaired"
        + (f"; {len(failed)} could not be read" if failed else "")
    )
    if failed:
        raise typer.Exit(1)
