"""One convention for splitting work over machines: `i/n`, 0-based, or `auto`.

`--shard` of predict, `--cells` of ablate and `--folds-to-run` of cv all read it: shard i of n
takes every n-th item from position i of a stable order, so the n shards are disjoint and cover
the whole. `auto` reads torchrun's RANK/WORLD_SIZE or a Slurm array's task id and count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

SHARD_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))


def parse_shard(text: str | None, option: str = "--shard") -> tuple[int, int]:
    """'i/n' (0-based: 0/2 and 1/2 split in two) or 'auto' -> (i, n); empty -> (0, 1)."""
    if not text:
        return 0, 1
    if text == "auto":
        for index_var, count_var in SHARD_ENV:
            if index_var in os.environ and count_var in os.environ:
                return parse_shard(f"{os.environ[index_var]}/{os.environ[count_var]}", option)
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(
            f"{option} {text!r}: expected 'i/n' with 0 <= i < n (0-based, e.g. 0/4), or 'auto'"
        ) from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"{option} {text!r}: expected 0 <= i < n and n >= 1 (shards count from 0, so the "
            f"shards of n=2 are 0/2 and 1/2)"
        )
    return index, count


def take_shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every count-th item from position `index`: shards are disjoint and cover `items`."""
    return list(items[index::count])
