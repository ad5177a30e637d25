"""The resumable job list: finished jobs are skipped, done.json is written last, a failure either
stops the list or is logged while the list goes on."""

import json

import pytest

from ptxseg.experiments.jobs import DONE, ERROR, Job, JobPolicy, read_done, run_jobs


def jobs(tmp_path, keys):
    return [Job(k, tmp_path / k, {"name": k}, tmp_path / k / "last.ckpt") for k in keys]


def test_finished_jobs_are_skipped_and_records_hold_the_seconds(tmp_path):
    calls, events = [], []

    def work(job):
        calls.append(job.key)
        return {"value": len(calls)}

    policy = JobPolicy(seconds_key="t", on_event=lambda *e: events.append(e[:2]))
    first = run_jobs(jobs(tmp_path, ["a", "b"]), work, policy)
    assert calls == ["a", "b"] and list(first) == ["a", "b"]
    record = json.loads((tmp_path / "a" / DONE).read_text())
    assert record["name"] == "a" and record["value"] == 1 and record["t"] >= 0
    again = run_jobs(jobs(tmp_path, ["a", "b", "c"]), work, policy)
    assert calls == ["a", "b", "c"] and again["a"] == record
    assert events[-4:] == [("skipped", "a"), ("skipped", "b"), ("started", "c"), ("done", "c")]


def test_a_job_with_a_checkpoint_is_resumed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "last.ckpt").write_bytes(b"x")
    events = []
    run_jobs(
        jobs(tmp_path, ["a"]), lambda job: {}, JobPolicy(on_event=lambda *e: events.append(e[0]))
    )
    assert events == ["resumed", "done"]


def test_a_failure_stops_the_list_unless_it_keeps_going(tmp_path):
    def work(job):
        if job.key == "a":
            raise RuntimeError("broke")
        return {}

    with pytest.raises(RuntimeError, match="broke"):
        run_jobs(jobs(tmp_path, ["a", "b"]), work)
    assert read_done(tmp_path / "a") is None and not (tmp_path / "b").exists()

    events = []
    policy = JobPolicy(keep_going=True, on_event=lambda *e: events.append(e))
    done = run_jobs(jobs(tmp_path, ["a", "b"]), work, policy)
    assert list(done) == ["b"] and "broke" in (tmp_path / "a" / ERROR).read_text()
    assert ("failed", "a", {"error": "RuntimeError: broke"}) in events
    run_jobs(jobs(tmp_path, ["a"]), lambda job: {}, policy)  # the rerun succeeds: log removed
    assert not (tmp_path / "a" / ERROR).exists() and read_done(tmp_path / "a") is not None


def test_an_unreadable_done_file_is_not_finished(tmp_path):
    (tmp_path / DONE).write_text("{not json")
    assert read_done(tmp_path) is None and read_done(tmp_path / "missing") is None
