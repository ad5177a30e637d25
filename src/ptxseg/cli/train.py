"""Commands: train, benchmark-training."""

from ptxseg.cli.app import app  # noqa: F401
