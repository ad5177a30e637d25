"""Commands: synth."""

from pathlib import Path

import typer

from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import Out, guarded
from ptxseg.util import path_guard
from ptxseg.util.run_folders import SYNTH_WRITES


def _replaceable(params) -> None:
    from ptxseg.data.synthetic import check_out_dir

    try:
        check_out_dir(params["out_dir"], params["overwrite"])
    except FileExistsError as err:
        raise path_guard.GuardError(str(err)) from None


@app.command("synth", rich_help_panel="Data")
@guarded(
    check=_replaceable,
    outputs={
        "out_dir": Out(owns=SYNTH_WRITES),
        "panel": Out(path_guard.FILE),
    },
)
def synth(
    out_dir: Path = typer.Argument(
        ..., help="Folder to write dicom-images-train/ and train-rle.csv into."
    ),
    n_images: int = typer.Option(200, "--n-images", min=1, help="Number of radiographs."),
    size: int = typer.Option(256, "--size", min=32, help="Image side in pixels (SIIM: 1024)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    positive_fraction: float = typer.Option(
        0.3, "--positive-fraction", min=0.0, max=1.0, help="Share of images with a pneumothorax."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a synthetic dataset already in OUT_DIR."
    ),
    conspicuity: float = typer.Option(
        1.0,
        "--conspicuity",
        min=0.0,
        help="How visible a pneumothorax is: 1 subtle (as on real films), 3 for quick CPU demos.",
    ),
    drains: str | None = typer.Option(
        None,
        "--drains",
        help="P_POS:P_NEG: draw a chest drain on that share of positive and of negative images "
        "(e.g. 0.7:0.05, a shortcut a model can learn), recorded in metadata.csv for "
        "`ptxseg evaluate --subgroups`.",
    ),
    panel: Path | None = typer.Option(
        None, "--panel", help="Also plot a few samples with their masks to this PNG."
    ),
) -> None:
    """Write synthetic chest X-rays in the SIIM-ACR Kaggle layout (DICOMs + stage-1 RLE CSV).

    Example: ptxseg synth data/synth --n-images 300 --size 256 --seed 0
    """
    from rich.console import Console

    from ptxseg.data.synthetic import Appearance, generate_dataset, parse_drains, plot_samples

    console = Console()
    try:
        summary = generate_dataset(
            out_dir,
            n_images,
            size=size,
            seed=seed,
            positive_fraction=positive_fraction,
            overwrite=overwrite,
            appearance=Appearance(conspicuity, parse_drains(drains)),
        )
    except (FileExistsError, ValueError) as error:
        fail(str(error))
    console.print(
        f"wrote {summary['n_images']} images ({summary['n_positive']} with pneumothorax, "
        f"{summary['n_regions']} regions, {summary['n_patients']} patients) at {size}px:\n"
        f"  {summary['images_dir']}\n  {summary['csv']}"
    )
    if summary["metadata"]:
        console.print(f"  {summary['metadata']} ({summary['n_drains']} images with a chest drain)")
    if panel is not None:
        plot_samples(out_dir, panel)
        console.print(f"  {panel}")
