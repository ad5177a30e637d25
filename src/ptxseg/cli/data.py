"""Commands: prepare, demo, benchmark-data."""

from ptxseg.cli.app import app  # noqa: F401
