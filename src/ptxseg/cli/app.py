"""The root typer application that every command module registers on."""

import typer

app = typer.Typer(
    name="ptxseg",
    help="Pneumothorax segmentation for chest X-rays (SIIM-ACR): data, training, evaluation, "
    "prediction and serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
