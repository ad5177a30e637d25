"""Failed files on the terminal: one line per kind of failure when many files share it.

5,000 zero-byte files must not print 5,000 lines: messages that differ only by the file they
name are grouped, and a group larger than `limit` becomes one line with its count and an
example. Every failure stays listed in the command's own file (summary.csv, unmatched.json).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PLACEHOLDER = "<file>"


def generic(message: str, file: str) -> str:
    """`message` with the file it names replaced by a placeholder (so that failures group)."""
    for name in (file, Path(file).name):
        if name:
            message = message.replace(name, PLACEHOLDER)
    return message


def summarise_failures(
    failures: Iterable[tuple[str, str]], where: str, limit: int = 3, most: int = 20
) -> list[str]:
    """Lines for (file, message) failures, in the order their kind first appears: a kind shared
    by more than `limit` files is one line ("5000 files: ..."), the others a line each; past
    `most` lines, a last one counts the files left out."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for file, message in failures:
        groups.setdefault(generic(str(message), str(file)), []).append((str(file), str(message)))
    lines: list[tuple[str, int]] = []  # (line, files it stands for)
    for kind, members in groups.items():
        if len(members) > limit:
            line = f"{len(members)} files: {kind} (e.g. {members[0][0]}; all listed in {where})"
            lines.append((line, len(members)))
        else:
            lines += [(f"{file}: {message}", 1) for file, message in members]
    if len(lines) > most:
        left = sum(n for _, n in lines[most - 1 :])
        lines = [*lines[: most - 1], (f"... {left} more files, all listed in {where}", left)]
    return [line for line, _ in lines]
