"""Shard specs: one 0-based `i/n` convention for predict, ablate and cv."""

from pathlib import Path

import pytest

from ptxseg.util.shards import parse_shard, take_shard


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_item_exactly_once(count):
    files = sorted(Path(f"/x/{name}.dcm") for name in "qwertyuiopasdfg")
    parts = [take_shard(files, i, count) for i in range(count)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == files and len(flat) == len(set(flat))


def test_parse_shard_reads_i_of_n_and_the_environment(monkeypatch):
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    assert parse_shard("0/1") == (0, 1)
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert parse_shard("auto") == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("auto") == (2, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_shard("auto") == (1, 2)


@pytest.mark.parametrize("bad", ["4/4", "x", "1/0", "-1/2", "1-2"])
def test_bad_specs_name_the_option_and_the_convention(bad):
    with pytest.raises(ValueError, match=r"--cells .*0-based|--cells .*0 <= i < n"):
        parse_shard(bad, "--cells")
