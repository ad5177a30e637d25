"""The root typer application that every command module registers on, and the exit codes.

Exit codes, the same for every command: 0 all done; 1 some inputs failed (each listed, and in
the command's output files); 2 usage error (a bad option or value, a missing input, an output path
that is a file), reported in one line and before anything is written; 3 an unexpected error (a
bug: the traceback is printed).
"""

from typing import NoReturn

import typer

EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    name="ptxseg",
    help="Pneumothorax segmentation for chest X-rays (SIIM-ACR): data, training, evaluation, "
    "prediction and serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `error: message` on stderr, one line (no wrapping, no traceback), and exit."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)
