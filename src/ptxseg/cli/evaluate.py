"""Commands: evaluate."""

from ptxseg.cli.app import app  # noqa: F401
