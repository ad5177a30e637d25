"""`ptxseg <command>`: thin command modules that parse options and call the library.

Each module below registers its commands on the shared `app`; heavy imports (torch) happen inside
the commands so that `ptxseg --help` stays instant.
"""

from ptxseg.cli import (  # noqa: F401  (importing registers the commands)
    augment,
    cv,
    data,
    evaluate,
    predict,
    report,
    serve,
    synth,
    train,
)
from ptxseg.cli.app import app


def main(argv: list[str] | None = None) -> None:
    """Console entry point; `argv` lets tests call the CLI in-process."""
    app(args=argv, prog_name="ptxseg")


__all__ = ["app", "main"]
