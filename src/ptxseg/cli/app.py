"""The root typer application that every command module registers on, its help panels, and the
exit codes.

`ptxseg --help` shows the commands in panels in the order of the flow (`PANELS`); each command
names its panel with `rich_help_panel=`, and `FLOW` orders the commands inside a panel. The root
callback keeps third-party banners, tips and deprecation warnings off the terminal before any
command runs (`ptxseg.cli.quiet`).

Exit codes, the same for every command: 0 all done; 1 some inputs failed (each listed, and in
the command's output files); 2 usage error (a bad option or value, a missing input, an output path
that is a file), reported in one line and before anything is written; 3 an unexpected error (a
bug: the traceback is printed).
"""

from typing import NoReturn

import typer
from typer.core import TyperGroup

from ptxseg.cli.quiet import quiet_third_party

EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

# The help panels in the order of the flow; a command names its own: @app.command(...,
# rich_help_panel="Data"). tests/cli/test_app.py checks that each command has one of these.
PANELS = (
    "Data",
    "Training",
    "Evaluation",
    "Prediction and export",
    "Serving and PACS",
    "Benchmarks",
    "Demo and reports",
)

# The commands in the order a user meets them; one missing here comes last in its panel.
FLOW = (
    "synth",
    "prepare",
    "train",
    "cv",
    "average-checkpoints",
    "ensemble",
    "augment-preview",
    "evaluate",
    "compare",
    "ablate",
    "predict",
    "export",
    "serve",
    "dicomweb",
    "listen",
    "listen-status",
    "repair-uids",
    "view",
    "benchmark",
    "benchmark-data",
    "benchmark-training",
    "benchmark-runtime",
    "benchmark-gpu",
    "benchmark-stats",
    "load-test",
    "demo",
    "report",
)


def reflow(text: str) -> str:
    """Each paragraph of a docstring on one line, for rich to wrap at the terminal's width (typer's
    rich mode keeps the source's line breaks)."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


class FlowGroup(TyperGroup):
    """Lists the commands panel by panel (`PANELS`), in the order of `FLOW` inside each; their
    help reflowed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if command.help:
                command.help = reflow(command.help)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        def place(item: tuple[int, str]) -> tuple[int, int, int]:
            index, name = item
            panel = getattr(self.commands[name], "rich_help_panel", None)
            flow = FLOW.index(name) if name in FLOW else len(FLOW)
            return (PANELS.index(panel) if panel in PANELS else len(PANELS), flow, index)

        return [name for _, name in sorted(enumerate(self.commands), key=place)]


app = typer.Typer(
    name="ptxseg",
    cls=FlowGroup,
    help="Pneumothorax segmentation for chest X-rays (SIIM-ACR): data, training, evaluation, "
    "prediction and serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _before_every_command() -> None:
    """Runs before any command (not for `--help`): third-party noise off the terminal."""
    quiet_third_party()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `error: message` on stderr, one line (no wrapping, no traceback), and exit."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)
