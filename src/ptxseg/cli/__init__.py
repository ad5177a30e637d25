"""`ptxseg <command>`: thin command modules that parse options and call the library.

Each module below registers its commands on the shared `app`; heavy imports (torch) happen inside
the commands so that `ptxseg --help` stays instant.
"""

import sys
import traceback

from ptxseg.cli import (  # noqa: F401  (importing registers the commands)
    augment,
    cv,
    data,
    evaluate,
    pacs,
    predict,
    report,
    serve,
    synth,
    train,
    view,
)
from ptxseg.cli.app import EXIT_INTERNAL, app


def main(argv: list[str] | None = None) -> None:
    """Console entry point; `argv` lets tests call the CLI in-process.

    An exception that no command turned into a message is a bug, not a failed input: its
    traceback is printed and the exit code is 3, so that 1 keeps meaning "some inputs failed".
    """
    try:
        app(args=argv, prog_name="ptxseg")
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)


__all__ = ["app", "main"]
