"""Commands: view (the results in the OHIF viewer, as a radiologist sees them)."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import READ, guarded
from ptxseg.cli.pacs import PACS_EXTRA


@app.command(rich_help_panel="Serving and PACS")
@guarded(inputs={"results": READ, "ohif": READ})
def view(
    results: Path | None = typer.Argument(
        None,
        help="A `ptxseg predict --seg --sr` output folder: open the studies of its reports.",
    ),
    url: str = typer.Option(..., help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."),
    study: list[str] = typer.Option(
        None, "--study", help="Study Instance UID to open (repeatable); none: the study list."
    ),
    store: bool = typer.Option(
        False,
        "--store",
        help="First store the RESULTS folder's SEG and SR, with their source images (repaired "
        "as `repair-uids` does), in the PACS.",
    ),
    port: int = typer.Option(3000, help="Port on 127.0.0.1 (0: any free one)."),
    ohif: Path | None = typer.Option(
        None,
        "--ohif",
        help="The OHIF build's dist/ folder (default: the one `make viewer` fetched).",
    ),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page."),
) -> None:
    """Open studies in the OHIF viewer against a DICOMweb PACS, on 127.0.0.1, until Ctrl-C.

    OHIF shows the SEG as a coloured overlay with its segment list and the SR's outlines with
    their area, as a radiologist's viewer would. The page and the PACS share one origin: ptxseg
    serves OHIF and forwards /dicom-web to --url with the environment's credentials
    (PTXSEG_DICOMWEB_TOKEN, or PTXSEG_DICOMWEB_USER and PTXSEG_DICOMWEB_PASSWORD, as for
    `ptxseg dicomweb`); the browser never sees them. OHIF is not part of ptxseg's package:
    `make viewer` fetches the pinned build.

    Example: ptxseg view results/ --url http://127.0.0.1:8042/dicom-web --store
    """
    import threading
    import webbrowser

    from ptxseg.integration import viewer as vw
    from ptxseg.integration.dicomweb import DicomwebError, StoreRefused

    try:
        dist = vw.find_ohif(ohif)
    except vw.ViewerMissingError as err:
        fail(str(err))
    if store and results is None:
        raise typer.BadParameter("--store stores a RESULTS folder: give one")
    try:
        studies = vw.studies_to_open(results, study or [], url, store, report=typer.echo)
    except (ValueError, OSError, DicomwebError, StoreRefused) as err:
        fail(str(err))
    except ImportError as err:
        fail(f"{err}; {PACS_EXTRA}")
    try:
        server = vw.make_server(dist, url, port)
    except DicomwebError as err:
        fail(str(err))
    except ImportError as err:
        fail(f"{err}; {PACS_EXTRA}")
    except OSError as err:
        fail(f"cannot listen on {vw.HOST}:{port} ({err.strerror or err}): choose another --port")
    version = vw.ohif_version(dist)
    if version not in (None, vw.OHIF_VERSION):
        typer.secho(
            f"note: {dist} holds OHIF {version}; ptxseg is tested with {vw.OHIF_VERSION}",
            fg="yellow",
            err=True,
        )
    page = vw.study_url(server.base_url, studies)
    typer.echo(f"OHIF on {server.base_url} (DICOMweb from {url}); Ctrl-C stops.\n{page}")
    if browser:
        threading.Timer(0.5, webbrowser.open, [page]).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
