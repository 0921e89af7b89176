"""Jobs and the journal: validation naming the field, replay, concurrent submitters, a torn
last line, one workdir per active job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxlm.errors import JobError
from jaxlm.jobs import Job
from jaxlm.jobs.queue import Journal, parse_size, replay
from tests.jobs.fakes import GiB


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "either a config or a command"),
        ({"config": "lstm:smoke"}, "job.workdir: a config job"),
        ({"command": "echo hi"}, "job.command: expected a non-empty list"),
        ({"command": ["x"], "gpus": 0}, "job.gpus: expected a positive integer, got 0"),
        ({"command": ["x"], "memory_bytes": -1}, "job.memory_bytes"),
        ({"command": ["x"], "seconds": "soon"}, "job.seconds"),
        ({"command": ["x"], "overrides": {"a": 1}}, "job.overrides: only a config job"),
    ],
)
def test_a_bad_job_names_its_field(fields, message):
    with pytest.raises(JobError, match=message):
        Job(**fields)


def test_a_job_survives_the_journal_and_unknown_fields_are_named():
    job = Job(config="lstm:smoke", workdir="/w", overrides={"model.hidden_sizes": (8, 8)})
    again = Job.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again.argv("py") == job.argv("py")
    assert again.argv("py")[-1] == "--config.model.hidden_sizes=(8,8)"
    with pytest.raises(JobError, match="unknown field 'gpu'"):
        Job.from_dict({"command": ["x"], "gpu": 2})


def test_sizes():
    assert parse_size("16GiB") == parse_size("16G") == 16 * GiB
    assert parse_size("1.5GB") == 1_500_000_000
    with pytest.raises(JobError, match="--memory: expected a size"):
        parse_size("lots", "--memory")


def test_replay_follows_each_job_through_its_attempts(tmp_path):
    journal = Journal(tmp_path)
    a = journal.submit(Job(command=("a",), memory_bytes=GiB))
    b = journal.submit(Job(command=("b",)))
    journal.append({"event": "start", "id": a, "attempt": 1, "placement": {"devices": ["gpu0"]}})
    journal.append(
        {
            "event": "exit",
            "id": a,
            "attempt": 1,
            "code": 1,
            "outcome": "oom",
            "retry": {"memory_scale": 1.5},
        }
    )
    journal.append({"event": "cancel", "id": b})
    records = journal.records()
    assert (records[a].state, records[a].memory_scale, records[a].history) == (
        "queued",
        1.5,
        ["oom"],
    )
    assert records[b].state == "cancelled" and records[b].attempt == 0


def test_a_torn_last_line_is_skipped_and_later_events_still_read(tmp_path):
    journal = Journal(tmp_path)
    journal.submit(Job(command=("a",)))
    with open(journal.path, "ab") as f:
        f.write(b'{"event": "submit", "id": "2", "jo')  # a crash in the middle of a write
    assert [e["id"] for e in Journal(tmp_path).read()] == ["1"]
    assert journal.submit(Job(command=("b",))) == "2"  # the torn line is ended, then skipped
    events = Journal(tmp_path).read()
    assert [e["id"] for e in events] == ["1", "2"] and replay(events)["2"].job.command == ("b",)


def test_concurrent_submitters_get_distinct_ids(tmp_path):
    code = (
        "import sys; from jaxlm.jobs import Job, submit\n"
        "for i in range(15): submit(Job(command=('echo', str(i))), queue=sys.argv[1])"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    ids = [e["id"] for e in Journal(tmp_path).read()]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 46)]


def test_two_active_jobs_may_not_share_a_workdir(tmp_path):
    journal = Journal(tmp_path / "q")
    first = journal.submit(Job(config="lstm:smoke", workdir=str(tmp_path / "run")))
    with pytest.raises(JobError, match=rf"already the workdir of job {first} \(queued\)"):
        journal.submit(Job(config="lstm:smoke", workdir=str(tmp_path / "run")))
    journal.append({"event": "cancel", "id": first})
    journal.submit(Job(config="lstm:smoke", workdir=str(tmp_path / "run")))  # now it may
