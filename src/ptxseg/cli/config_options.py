"""The options of `train` and `cv` built from the config dataclasses (`ptxseg.config`).

Every config key declared with `option_field` becomes an option: its flag is the key's name
(`optim.warmup_epochs` -> `--warmup-epochs`) unless the field names another (`flag="--data"`),
its type comes from the field's annotation (a bool is a `--x/--no-x` pair) unless the field
names another (`kind=Path`), and its help text and checks (`min=1`) come from the field's
metadata. Every such option defaults to None: an option left out keeps the preset's (or the
default) value. A new config key is one edit in `ptxseg.config`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ptxseg.cli.app import fail
from ptxseg.config import SECTIONS

SET_HELP = "Any other config key: --set optim.lr_factor=0.3 (repeatable)."


@dataclass(frozen=True)
class ConfigOption:
    """One command-line option that sets one config key."""

    key: str  # section.field
    name: str  # the command function's parameter
    flag: str
    kind: type
    help: str
    checks: dict[str, Any]

    def parameter(self) -> inspect.Parameter:
        """The typer parameter: None by default, `--x/--no-x` for a bool."""
        decls = [f"{self.flag}/--no-{self.flag[2:]}"] if self.kind is bool else [self.flag]
        option = typer.Option(None, *decls, help=self.help, **self.checks)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=self.kind
        )


def _kind(annotation: str) -> type:
    """The option's type from the field's annotation (`float | str` is text the config parses)."""
    for prefix, kind in (("bool", bool), ("int", int), ("float | str", str), ("float", float)):
        if annotation.startswith(prefix):
            return kind
    return str


def config_options() -> list[ConfigOption]:
    """The options of every config key declared with `option_field`, section by section."""
    found = []
    for section, body in SECTIONS.items():
        for f in dataclasses.fields(_section_class(section, body)):
            if "help" not in f.metadata:
                continue
            meta = dict(f.metadata)
            flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
            help_text = meta.pop("help")
            kind = meta.pop("kind", None) or _kind(str(f.type))
            name = flag[2:].replace("-", "_")
            found.append(ConfigOption(f"{section}.{f.name}", name, flag, kind, help_text, meta))
    return found


def _section_class(section: str, annotation: Any) -> type:
    from ptxseg.config import TrainConfig

    return type(getattr(TrainConfig(), section)) if isinstance(annotation, str) else annotation


def config_parameters(leave_out: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The typer parameters of the config options, less those named in `leave_out`."""
    return [o.parameter() for o in config_options() if o.name not in leave_out]


def set_parameter(help_text: str = SET_HELP) -> inspect.Parameter:
    """`--set section.key=value` (repeatable): any config key without an option of its own."""
    option = typer.Option([], "--set", help=help_text)
    return inspect.Parameter(
        "set_", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=list[str]
    )


def parse_set(items: list[str]) -> dict[str, str]:
    """`--set section.key=value` items as config overrides."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr_factor=0.3")
        values[key.strip()] = value.strip()
    return values


def config_overrides(params: dict[str, Any], set_items: list[str] | None = None) -> dict:
    """The config keys that the given (not None) config options and `--set` items set."""
    overrides = {
        o.key: (str(params[o.name]) if isinstance(params[o.name], Path) else params[o.name])
        for o in config_options()
        if params.get(o.name) is not None
    }
    overrides.update(parse_set(set_items or []))
    return overrides


def with_parameters(function, parameters: list[inspect.Parameter]):
    """Give a `**params` command function the typer parameters it is called with."""
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function
