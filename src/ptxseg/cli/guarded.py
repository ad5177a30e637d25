"""`@guarded`: a command declares which options it reads and which it writes; before it runs,
`ptxseg.util.path_guard` checks the outputs against the inputs and takes the output folders' locks.

Roles of an input option: `read` (a file, or a folder read whole), `walked` (a folder the command
searches for files; its walk skips the outputs) and `model` (a .ckpt, model folder, .onnx file,
ensemble file or cv folder: an ensemble's members are inputs too). A `str` option that may name a
file (`--config`, `--encoder-weights`) is an input when that file exists.

An output option is an `Out`: its kind (`file`, `folder`, `replace`: see
`ptxseg.util.path_guard.Output`),
the names it owns in a folder, whether a run locks the folder (`lock`: True, False, or a function
of the options naming the lock file, for commands whose shards share one folder), and `paths`, a
function of the options, for outputs that the command computes (a default beside its input, a
file inside the folder given).

A refusal is one line and exit code 2, before anything is written; an operating-system error
that escapes the command (a full disk, a read-only folder) is one line and exit code 1. The test
over every command (tests/cli/test_guarded.py) reads the declarations from the typer app, so a
command without one fails it.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.cli.app import EXIT_INPUTS_FAILED, fail
from ptxseg.util import path_guard

READ, WALKED, MODEL = "read", "walked", "model"
ENSEMBLE_FILE = "ensemble.json"  # ptxseg.inference.ensemble's format, read here without torch


@dataclass(frozen=True)
class Out:
    """How a command writes one output option (see the module docstring)."""

    kind: str = path_guard.FOLDER
    owns: tuple[str, ...] | None = None
    lock: bool | Callable[[dict[str, Any]], str] = True
    paths: Callable[[dict[str, Any]], list[tuple[Path, str]]] | None = None


TABLES = Out(path_guard.FOLDER, owns=None, lock=False)
"""A folder of result tables (benchmarks): written file by file, atomically, never locked (the
benchmark commands share `benchmarks/results`)."""


@dataclass
class Declaration:
    """What `@guarded` knows about a command: its body, inputs, outputs and option labels."""

    body: Callable[..., Any]
    inputs: dict[str, str]
    outputs: dict[str, Out]
    labels: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None  # more refusals, before any lock

    def input_paths(self, params: dict[str, Any]) -> list[path_guard.Input]:
        found = []
        for name, role in self.inputs.items():
            label = self.labels.get(name, name)
            for value in _values(params.get(name)):
                path = Path(value)
                if isinstance(value, str) and not path.exists():
                    continue  # a preset name, `imagenet`, `none`
                if role == MODEL:
                    found += [path_guard.Input(p, label) for p in model_inputs(path)]
                else:
                    found.append(path_guard.Input(path, label, walked=role == WALKED))
        return found

    def output_paths(self, params: dict[str, Any]) -> list[tuple[path_guard.Output, str | None]]:
        found = []
        for name, out in self.outputs.items():
            label = self.labels.get(name, name)
            if out.paths is not None:
                paths = out.paths(params)
            else:
                paths = [(value, out.kind) for value in _values(params.get(name))]
            for value, kind in paths:
                lock = None
                if kind == path_guard.FOLDER and out.lock:
                    lock = out.lock(params) if callable(out.lock) else path_guard.LOCK
                found.append((path_guard.Output(Path(value), label, kind, out.owns), lock))
        return found

    def run(self, params: dict[str, Any]) -> Any:
        try:
            outputs = self.output_paths(params)
            path_guard.check(self.input_paths(params), [o for o, _ in outputs])
            if self.check is not None:
                self.check(params)
        except path_guard.GuardError as err:
            fail(str(err))
        with ExitStack() as stack:
            for out, lock in outputs:
                if lock is None or (lock == path_guard.LOCK and path_guard.secondary_process()):
                    continue  # the other ranks of a distributed run share rank 0's lock
                try:
                    stack.enter_context(path_guard.claim(out.path, lock, out.label))
                except path_guard.GuardError as err:
                    fail(str(err))
                except OSError as err:
                    reason = path_guard.describe_os_error(err)
                    fail(f"cannot write to {out.label} {out.path}: {reason}")
            try:
                return self.body(**params)
            except OSError as err:
                where = f"{err.filename}: " if err.filename else ""
                fail(
                    f"{where}{path_guard.describe_os_error(err)}; what was finished is kept",
                    EXIT_INPUTS_FAILED,
                )


def guarded(
    inputs: dict[str, str] | None = None,
    outputs: dict[str, Out] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a command's input and output options (see the module docstring); `check`, a
    function of the options, may refuse more (GuardError) before anything is written."""

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        signature = getattr(body, "__signature__", None) or inspect.signature(body)
        labels = {name: option_label(name, p) for name, p in signature.parameters.items()}
        declaration = Declaration(body, dict(inputs or {}), dict(outputs or {}), labels, check)
        for name in [*declaration.inputs, *declaration.outputs]:
            if name not in signature.parameters:
                raise TypeError(f"{body.__name__} has no option {name!r} to declare")

        @functools.wraps(body)
        def command(**params: Any) -> Any:
            return declaration.run(params)

        command.__signature__ = signature  # type: ignore[attr-defined]
        command.guarded = declaration  # type: ignore[attr-defined]
        return command

    return decorate


def shard_lock(option: str) -> Callable[[dict[str, Any]], str]:
    """The lock file of a run that takes shard `i/n` (the value of `option`) of a folder that
    its other shards write too: one lock per shard."""

    def name(params: dict[str, Any]) -> str:
        from ptxseg.util.shards import parse_shard

        try:
            index, count = parse_shard(params.get(option))
        except ValueError:
            return path_guard.LOCK  # the command says what is wrong with the value
        return path_guard.LOCK if count == 1 else f".ptxseg.shard-{index}-of-{count}.lock"

    return name


def option_label(name: str, parameter: inspect.Parameter) -> str:
    """How the user spells an option: its longest flag (`--out`), or an argument's NAME."""
    info = parameter.default
    declared = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")]
    if type(info).__name__ == "ArgumentInfo":
        return name.upper()
    return max(declared, key=len) if declared else "--" + name.replace("_", "-")


def model_inputs(path: Path) -> list[Path]:
    """The paths a model option reads: the file or model folder itself, or an ensemble's file
    and its members (a cv folder is read through its ensemble.json, not whole)."""
    file = path / ENSEMBLE_FILE if path.is_dir() else path
    if file.suffix.lower() != ".json" or not file.is_file():
        return [path]
    try:
        members = json.loads(file.read_text()).get("members") or []
    except (OSError, ValueError, AttributeError):
        return [file]
    return [file] + [
        file.parent / m["path"] for m in members if isinstance(m, dict) and "path" in m
    ]


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
