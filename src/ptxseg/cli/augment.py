"""Commands: augment-preview."""

from pathlib import Path

import typer

from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import READ, Out, guarded
from ptxseg.util import path_guard


@app.command("augment-preview", rich_help_panel="Training")
@guarded(inputs={"image": READ, "mask": READ}, outputs={"out": Out(path_guard.FILE)})
def augment_preview(
    out: Path = typer.Option(..., "--out", help="PNG to write the grid to."),
    image: Path | None = typer.Option(
        None,
        "--image",
        help="Radiograph to augment (DICOM, PNG or JPEG). Default: one synthetic radiograph "
        "with a pneumothorax.",
    ),
    mask: Path | None = typer.Option(
        None,
        "--mask",
        help="Mask PNG for --image at the image's size (non-zero = pneumothorax). "
        "Default: no outline.",
    ),
    n: int = typer.Option(4, "--n", min=1, max=16, help="Augmented samples per strategy."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same grid."),
    size: int = typer.Option(256, "--size", min=32, help="Side in pixels of the samples."),
) -> None:
    """Plot what each augmentation strategy does: one row per strategy, the mask outlined in red.

    Example: ptxseg augment-preview --out docs/images/augment-preview.png --n 4 --seed 0
    """
    from rich.console import Console

    from ptxseg.data.dicom import ImageReadError
    from ptxseg.training.preview import load_pair, plot_preview, synthetic_pair

    console = Console()
    if mask is not None and image is None:
        fail("--mask needs --image (the radiograph it belongs to)")
    try:
        if image is None:
            pixels, region = synthetic_pair(size=size, seed=seed)
        else:
            pixels, region = load_pair(image, mask, size)
        path = plot_preview(pixels, region, out, n=n, seed=seed, size=size)
    except (ImageReadError, ValueError, OSError) as error:
        fail(str(error))
    console.print(f"wrote {path}")
