"""Attempts as local processes: the wrapper's lock and exit file, a lost attempt told from a
live one, and a late wrapper of a given-up attempt running nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from jaxlm.jobs import Job
from jaxlm.jobs.balancer import Placement, Policy
from jaxlm.jobs.inventory import Inventory
from jaxlm.jobs.local import WRAPPER, LocalBackend, run_files
from jaxlm.jobs.queue import JobRecord, Journal
from tests.jobs.fakes import attempts, balance, fake, gpus


def wrapper(lock, exit_file, *command: str) -> list[str]:
    return [
        sys.executable,
        "-I",
        "-S",
        str(WRAPPER),
        "--lock",
        str(lock),
        "--exit",
        str(exit_file),
        "--",
        *command,
    ]


def test_the_wrapper_records_the_exit_status_and_passes_sigterm_on(tmp_path):
    lock, exit_file = tmp_path / "1.1.lock", tmp_path / "1.1.exit"
    done = subprocess.run(wrapper(lock, exit_file, *fake("--exit", 7)), capture_output=True)
    assert done.returncode == 7 and json.loads(exit_file.read_text())["code"] == 7
    lock, exit_file = tmp_path / "1.2.lock", tmp_path / "1.2.exit"
    proc = subprocess.Popen(
        wrapper(lock, exit_file, *fake("--until_sigterm")), stdout=subprocess.PIPE, text=True
    )
    lines = [proc.stdout.readline() for _ in range(2)]  # its attempt, then its handler's there
    assert lines[-1] == "waiting for SIGTERM\n", lines
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 143 and json.loads(exit_file.read_text())["code"] == 143
    assert "got SIGTERM, saved and stopped" in out


def test_an_attempt_given_up_before_its_wrapper_started_runs_nothing(tmp_path):
    # The balancer journaled the start and died before (or while) starting the wrapper.
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    journal = Journal(queue)
    job_id = journal.submit(Job(command=fake("--record", log), memory_bytes=2**30))
    placement = Placement(("gpu0",), 0.069, 0, env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.069"})
    journal.append(
        {
            "event": "start",
            "id": job_id,
            "attempt": 1,
            "placement": {**placement.to_dict(), "log_offset": 0},
        }
    )
    record = balance(queue, gpus(tmp_path, 16))[job_id]
    assert record.state == "finished" and record.history == ["lost", "finished"]
    # The first attempt's wrapper, had it started late, finds it given up and runs nothing.
    lock, exit_file = run_files(queue, job_id, 1)
    late = subprocess.run(wrapper(lock, exit_file, *fake("--record", log)))
    assert late.returncode == 75
    assert [r["attempt"] for r in attempts(log)] == [2, 2]  # its start and end only


def test_poll_tells_a_running_attempt_from_an_ended_one(tmp_path):
    queue = tmp_path / "q"
    backend = LocalBackend(queue, Inventory(gpus(tmp_path, 16)), Policy())
    record = JobRecord("1", Job(command=fake("--sleep", 0.5, "--exit", 4)))
    attempt = backend.prepare(record, 1, Placement(("gpu0",)))
    backend.launch(record, attempt)
    assert backend.poll(attempt) == (False, None)
    deadline = time.time() + 20
    while not (ended := backend.poll(attempt))[0] and time.time() < deadline:
        time.sleep(0.05)
    assert ended == (True, 4)
    assert "line 2 of the output" in attempt.log.read_text()
