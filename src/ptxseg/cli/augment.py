"""Commands: augment-preview."""

from ptxseg.cli.app import app  # noqa: F401
