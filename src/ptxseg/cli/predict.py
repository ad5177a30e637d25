"""Commands: predict, export, benchmark-runtime."""

from ptxseg.cli.app import app  # noqa: F401
