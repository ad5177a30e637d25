"""Commands: benchmark, ablate, report."""

from ptxseg.cli.app import app  # noqa: F401
