"""Which paths a command may write, checked against what it reads, before it writes anything.

The one place that owns the rules keeping a command from destroying its own inputs (Make and
Snakemake compare what a rule writes with what it reads for the same reason):

- an output that is an input is refused;
- an output inside an input folder is refused, unless the command walks that folder (searches it
  for files): the walk then skips the output (`walk`), so `predict scans -o scans/results` run
  twice gives the same result;
- an output inside a model folder (one holding `ptxseg.json`) is refused, also when the input is
  a file in it;
- an output folder that holds an input is refused when the command replaces the folder whole, or
  writes where the input lies (`Output.owns`);
- a second run writing into an output folder that a running one holds is refused (`claim`: a lock
  file in the folder);
- a folder records which command made it (`mark`, `made_by`): `synth --overwrite` replaces only
  its own, and walks skip folders of results (`predict`'s), which are not inputs.

Refusals are `GuardError`s: one line that names the paths and what to do. The CLI declares each
command's inputs and outputs (`ptxseg.cli.guarded`) and turns a refusal into exit code 2.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxseg.util import atomic
from ptxseg.util.run_folders import MADE_BY

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".ptxseg.lock"
MODEL_INFO = "ptxseg.json"  # what makes a folder a model folder (ptxseg.model.checkpoint)
HOLDS = ("results", "data")
"""What a marked folder holds: results (never inputs: walks skip them) or data (inputs)."""
FILE, FOLDER, REPLACE = "file", "folder", "replace"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class GuardError(ValueError):
    """A path that a command must not write (or cannot write now); one line, with the fix."""


@dataclass(frozen=True)
class Input:
    """A path a command reads: a file, or a folder read whole or walked (searched for files)."""

    path: Path
    label: str = "input"
    walked: bool = False


@dataclass(frozen=True)
class Output:
    """A path a command writes.

    `kind`: `file` (one file, written whole), `folder` (the command writes its files into it) or
    `replace` (a folder written whole, in place of any folder there). `owns`: for `folder`, the
    names (glob patterns) the command writes at the folder's top; None: it may write anywhere
    in it."""

    path: Path
    label: str = "--out"
    kind: str = FOLDER
    owns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in (FILE, FOLDER, REPLACE):
            raise ValueError(f"output kind {self.kind!r}: expected file, folder or replace")


def real(path: str | os.PathLike) -> Path:
    """The absolute path with symbolic links resolved (the parts that exist)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def is_inside(path: Path, folder: Path) -> bool:
    """True when `path` lies under `folder` (not equal); both already `real`."""
    return path != folder and path.is_relative_to(folder)


def model_folder(path: Path) -> Path | None:
    """The model folder an input is or lies in (one holding ptxseg.json), else None."""
    if (path / MODEL_INFO).is_file():
        return path
    if path.is_file() and (path.parent / MODEL_INFO).is_file():
        return path.parent
    return None


def check(inputs: Iterable[Input], outputs: Iterable[Output]) -> None:
    """Refuse (GuardError) an output that is, lies in, or would overwrite an input."""
    inputs = [i for i in inputs if i.path is not None]
    for out in outputs:
        check_kind(out)
        target = real(out.path)
        for given in inputs:
            _check_pair(out, target, given, real(given.path))


def check_kind(out: Output) -> None:
    """An output file that is a folder, or an output folder that is a file, is refused."""
    path = Path(out.path)
    if out.kind == FILE and path.is_dir():
        raise GuardError(f"{out.label} {path} is a folder: expected the name of a file to write")
    if out.kind != FILE and path.exists() and not path.is_dir():
        raise GuardError(
            f"{out.label} {path} is a file: expected a folder (a new one, or one an earlier "
            "run wrote)"
        )


def _check_pair(out: Output, target: Path, given: Input, source: Path) -> None:
    name = f"{given.label} {given.path}" if given.label != out.label else str(given.path)
    if target == source:
        raise GuardError(
            f"{out.label} {out.path} is also the input {name}: writing it would destroy the "
            f"input; choose another {out.label}"
        )
    unit = model_folder(source)
    if unit is not None and (target == unit or is_inside(target, unit)):
        raise GuardError(
            f"{out.label} {out.path} is inside the model folder {unit} ({name}): writing there "
            f"would change the model; choose a {out.label} outside it"
        )
    if is_inside(target, source):
        if source.is_file():
            raise GuardError(
                f"{out.label} {out.path} is inside the input file {name}: choose another "
                f"{out.label}"
            )
        if not given.walked:
            raise GuardError(
                f"{out.label} {out.path} is inside the input folder {name}, which is read "
                f"whole: choose a {out.label} outside it"
            )
        return  # a walked folder: the walk skips the output
    if is_inside(source, target):
        if out.kind == REPLACE:
            raise GuardError(
                f"{out.label} {out.path} holds the input {name} and is replaced whole: writing "
                f"it would delete the input; choose another {out.label}"
            )
        top = source.relative_to(target).parts[0]
        if out.kind == FOLDER and (
            out.owns is None or any(fnmatch.fnmatch(top, p) for p in out.owns)
        ):
            raise GuardError(
                f"{out.label} {out.path} holds the input {name}, where this command writes "
                f"its own files: choose another {out.label}, or move the input out of it"
            )


def check_targets(targets: Iterable[Path], inputs: Iterable[Path], label: str = "--out") -> None:
    """Refuse when a file the command would write (`targets`) is one of its `inputs`."""
    sources = {real(p): p for p in inputs}
    for target in targets:
        source = sources.get(real(target))
        if source is not None:
            raise GuardError(
                f"{label}: writing {target} would overwrite the input {source}; choose a "
                f"{label} outside the inputs"
            )


# ------------------------------------------------------------------------------ walks


def walk(
    root: str | os.PathLike, suffixes: Sequence[str], skip: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Files under `root` whose suffix is one of `suffixes` (lower case), sorted.

    The folders in `skip` (the command's own outputs) and folders of results (marked by `mark`
    with holds="results", e.g. an earlier predict's) are not entered: outputs are not inputs."""
    root = Path(root)
    skipped = {real(p) for p in skip}
    if real(root) in skipped:
        return []
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not _not_inputs(here / d, skipped))
        found += [
            here / f for f in files if Path(f).suffix.lower() in suffixes and (here / f).is_file()
        ]
    return sorted(found, key=str)


def _not_inputs(folder: Path, skipped: set[Path]) -> bool:
    if real(folder) in skipped:
        return True
    made = made_by(folder)
    return made is not None and made.get("holds") == "results"


# ------------------------------------------------------------------------------ marks


def mark(folder: str | os.PathLike, command: str, holds: str, **details: Any) -> Path:
    """Record in `folder/made-by.json` which command made the folder and what it holds."""
    if holds not in HOLDS:
        raise ValueError(f"holds {holds!r}: expected one of {', '.join(HOLDS)}")
    record = {"command": command, "holds": holds, **details}
    text = json.dumps(record, indent=2, sort_keys=False, default=str) + "\n"
    atomic.write_if_changed(Path(folder) / MADE_BY, text)
    return Path(folder) / MADE_BY


def made_by(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record `mark` left in `folder`, or None (no record, or not one of ours)."""
    try:
        record = json.loads((Path(folder) / MADE_BY).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "command" in record else None


# ------------------------------------------------------------------------------ locks


def describe_os_error(err: OSError) -> str:
    """An operating-system error in words: what happened, and what to do."""
    what = err.strerror or str(err) or type(err).__name__
    hint = {
        errno.ENOSPC: "free some space, or write elsewhere, and rerun",
        errno.EDQUOT: "free some space, or write elsewhere, and rerun",
        errno.EROFS: "choose a writable folder",
        errno.EACCES: "check the permissions, or choose another folder",
        errno.EPERM: "check the permissions, or choose another folder",
    }.get(err.errno, "fix it and rerun")
    return f"{what} (errno {err.errno}): {hint}"


def secondary_process() -> bool:
    """True in a process that a distributed launcher started besides rank 0 (torchrun,
    Lightning's DDP, Slurm tasks): it shares the run of rank 0 and takes no lock of its own."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) > 0:
            return True
    return False


@contextmanager
def claim(folder: str | os.PathLike, name: str = LOCK, label: str = "--out") -> Iterator[Path]:
    """Hold the lock file `folder/name` while the block runs; GuardError when another running
    process holds it. The folder is made when missing (and removed again when the block leaves
    nothing but the lock in it). The lock is the kernel's (flock): it ends with the process,
    also after kill -9, and works on a folder that several machines share."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                raise GuardError(
                    f"{label} {folder} is being written by another run ({holder}): wait for it "
                    f"to end, or choose another {label}"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"ptxseg pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # left empty: an output folder's bytes do not depend on the pid
    finally:
        os.close(fd)
        if created:  # also when the command failed: no empty folder is left behind
            _remove_if_only_lock(folder, name)


def _remove_if_only_lock(folder: Path, name: str) -> None:
    try:
        if [p.name for p in folder.iterdir()] == [name]:
            (folder / name).unlink()
            folder.rmdir()
    except OSError:
        pass
