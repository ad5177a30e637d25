"""Commands: serve, load-test."""

from ptxseg.cli.app import app  # noqa: F401
