"""The balancer on a fake inventory (two 16 GiB GPUs described by a file) with fake jobs: packing
by measured memory, waiting for room, out-of-memory retries, preemption, failures, cancels,
dry runs, and a balancer killed and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlm.errors import JobError
from jaxlm.jobs import Balancer, Job, Policy, cancel, submit
from jaxlm.jobs.balancer import memory_fraction
from jaxlm.jobs.queue import Journal
from tests.jobs.fakes import GiB, attempts, balance, fake, gpus

ROOT = Path(__file__).resolve().parents[2]


def starts(rows: list[dict], job: str | None = None) -> list[dict]:
    return [r for r in rows if r["event"] == "start" and (job is None or r["job"] == job)]


def ends(rows: list[dict], job: str) -> list[dict]:
    return [r for r in rows if r["event"] == "end" and r["job"] == job]


def test_six_jobs_are_packed_onto_two_gpus_by_memory_and_a_seventh_waits(tmp_path):
    queue, log, barrier = tmp_path / "q", tmp_path / "attempts.jsonl", tmp_path / "barrier"
    barrier.mkdir()
    sizes = [8, 6, 5, 4, 3, 2]  # GiB; with 10% headroom 30.8 of the 32 GiB
    ids = [
        submit(
            Job(command=fake("--record", log, "--barrier", barrier, 6), memory_bytes=s * GiB),
            queue=queue,
        )
        for s in sizes
    ]
    late = submit(Job(command=fake("--record", log), memory_bytes=4 * GiB), queue=queue)
    records = balance(queue, gpus(tmp_path, 16, 16))
    assert all(r.state == "finished" for r in records.values()), records
    rows = attempts(log)
    given = {r["job"]: r for r in starts(rows)}
    # Each ran on one GPU, named in PCI bus order, with the fraction of its need and headroom.
    for job_id, size in zip(ids, sizes, strict=True):
        row = given[job_id]
        assert row["order"] == "PCI_BUS_ID" and row["cuda"] in ("0", "1")
        assert float(row["fraction"]) == memory_fraction(size * GiB, 16 * GiB, 0.1)
        assert records[job_id].placement["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == row["fraction"]
    # Packed by least wait, then most free memory: 8+4+2 GiB on GPU 0, 6+5+3 on GPU 1.
    on = {size: given[i]["cuda"] for i, size in zip(ids, sizes, strict=True)}
    assert on == {8: "0", 4: "0", 2: "0", 6: "1", 5: "1", 3: "1"}
    for gpu in ("0", "1"):
        share = sum(float(given[i]["fraction"]) for i in ids if given[i]["cuda"] == gpu)
        assert share <= 1.0
    # All six ran at once (each waited at the barrier for the other five).
    assert all("6 of 6 together" in open(queue / f"logs/{i}.log").read() for i in ids)
    # The seventh fitted nowhere while they ran: it started after one of them had ended.
    first_end = min(r["time"] for r in rows if r["event"] == "end" and r["job"] in ids)
    assert given[late]["time"] >= first_end


def test_out_of_memory_is_retried_with_more_memory_then_alone(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    neighbour = submit(
        Job(command=fake("--record", log, "--sleep", 3), memory_bytes=2 * GiB), queue=queue
    )
    # Runs out of memory below 90% of the GPU: 0.275 (its need), 0.413 (1.5x), then alone.
    hungry = submit(
        Job(command=fake("--record", log, "--oom_below", 0.9), memory_bytes=4 * GiB), queue=queue
    )
    records = balance(queue, gpus(tmp_path, 16))
    assert records[hungry].state == "finished" and records[neighbour].state == "finished"
    assert records[hungry].history == ["oom", "oom", "finished"]
    rows = attempts(log)
    tries = starts(rows, hungry)
    assert [t["fraction"] for t in tries] == ["0.275", "0.413", "0.950"]
    # The first two shared the GPU with the neighbour; the last waited for it to end.
    neighbour_end = ends(rows, neighbour)[0]["time"]
    assert tries[0]["time"] < neighbour_end and tries[2]["time"] >= neighbour_end
    assert records[hungry].placement["alone"] is True
    assert "RESOURCE_EXHAUSTED" in open(queue / f"logs/{hungry}.log").read()


def test_out_of_memory_alone_fails_with_the_end_of_its_log(tmp_path):
    queue = tmp_path / "q"
    job_id = submit(Job(command=fake("--oom_below", 2.0), memory_bytes=GiB), queue=queue)
    record = balance(queue, gpus(tmp_path, 16))[job_id]
    assert record.state == "failed" and record.history == ["oom", "oom", "oom"]
    assert "out of memory alone" in record.message and "RESOURCE_EXHAUSTED" in record.message


def test_a_preempted_job_is_requeued_and_resumes_from_its_workdir(tmp_path):
    queue, workdir = tmp_path / "q", tmp_path / "run"
    job_id = submit(
        Job(command=fake("--preempt_once", workdir), workdir=str(workdir), memory_bytes=GiB),
        queue=queue,
    )
    record = balance(queue, gpus(tmp_path, 16, 16))[job_id]
    assert record.state == "finished" and record.history == ["preempted", "finished"]
    log = open(queue / f"logs/{job_id}.log").read()
    assert "preempted at step 5" in log and "resumed from step 5" in log
    assert log.count("=== attempt") == 2


def test_a_failed_job_is_recorded_with_the_tail_of_its_log_and_alerted(tmp_path):
    queue, alerts = tmp_path / "q", tmp_path / "alerts.txt"
    job_id = submit(Job(command=fake("--exit", 3), memory_bytes=GiB), queue=queue)
    command = f'echo "$JAXLM_EVENT|$JAXLM_MESSAGE" > {alerts}'
    record = balance(queue, gpus(tmp_path, 16), alert_command=command)[job_id]
    assert record.state == "failed" and record.exit_code == 3 and record.history == ["failed"]
    assert record.message.splitlines()[0] == "exit 3: line 2 of the output"
    assert "line 0 of the output" in record.message  # the tail, not only the last line
    deadline = time.monotonic() + 20  # the alert runs in the background
    while not (alerts.exists() and alerts.read_text().endswith("\n")):
        assert time.monotonic() < deadline, "no alert"
        time.sleep(0.05)
    assert alerts.read_text() == f"failure|job {job_id} attempt 1: exit 3: line 2 of the output\n"


def test_a_job_too_big_for_every_gpu_fails_at_once(tmp_path):
    queue = tmp_path / "q"
    job_id = submit(Job(command=fake(), memory_bytes=40 * GiB), queue=queue)
    record = balance(queue, gpus(tmp_path, 16, 16))[job_id]
    assert record.state == "failed" and record.attempt == 0
    assert "44.0 GiB" in record.message and "15.2 GiB" in record.message


def test_a_two_gpu_job_gets_both_and_jobs_of_unknown_need_run_alone(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    wide = submit(Job(command=fake("--record", log), memory_bytes=3 * GiB, gpus=2), queue=queue)
    unknown = submit(Job(command=fake("--record", log, "--sleep", 0.5)), queue=queue)
    small = submit(
        Job(command=fake("--record", log, "--sleep", 0.5), memory_bytes=GiB), queue=queue
    )
    records = balance(queue, gpus(tmp_path, 16, 16))
    assert all(r.state == "finished" for r in records.values())
    given = {r["job"]: r for r in starts(attempts(log))}
    assert given[wide]["cuda"] == "0,1" and given[wide]["fraction"] == "0.207"
    assert given[unknown]["fraction"] == "0.950" and records[unknown].placement["alone"]
    assert given[small]["cuda"] != given[unknown]["cuda"]  # not beside the one alone


def test_the_memory_need_comes_from_the_dry_run(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    command = fake("--record", log, "--dry_run_bytes", 6 * GiB)
    job_id = submit(Job(command=command, dry_run=True), queue=queue)
    bad = submit(Job(command=fake("--exit", 1), dry_run=True), queue=queue)
    records = balance(queue, gpus(tmp_path, 16))
    assert records[job_id].state == "finished" and records[job_id].need == 6 * GiB
    assert starts(attempts(log))[0]["fraction"] == "0.413"
    assert records[bad].state == "failed" and "printed no DRY_RUN line" in records[bad].message


def test_cancel_drops_a_queued_job_and_stops_a_running_one(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    running = submit(
        Job(command=fake("--record", log, "--until_sigterm"), memory_bytes=13 * GiB), queue=queue
    )
    waiting = submit(Job(command=fake("--record", log), memory_bytes=13 * GiB), queue=queue)
    balancer = Balancer(queue, gpus(tmp_path, 16), poll=0.05, log=None)
    balancer.open()
    try:
        deadline = time.time() + 20
        while not starts(attempts(log)) and time.time() < deadline:
            balancer.step()
            time.sleep(0.05)
        cancel(waiting, queue=queue)
        cancel(running, queue=queue)
        while balancer.step() and time.time() < deadline:
            time.sleep(0.05)
    finally:
        balancer.close()
    records = Journal(queue).records()
    assert records[running].state == "cancelled" and records[waiting].state == "cancelled"
    assert records[waiting].attempt == 0 and len(starts(attempts(log))) == 1
    assert "got SIGTERM, saved and stopped" in open(queue / f"logs/{running}.log").read()


def test_cpu_jobs_get_cores_of_their_own_and_as_many_threads(tmp_path):
    queue, log, barrier = tmp_path / "q", tmp_path / "attempts.jsonl", tmp_path / "barrier"
    barrier.mkdir()
    for _ in range(2):
        submit(Job(command=fake("--record", log, "--barrier", barrier, 2)), queue=queue)
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    inventory = tmp_path / "cpus.json"
    inventory.write_text(f'{{"cpus": {cores}}}')
    records = balance(queue, str(inventory))
    assert all(r.state == "finished" for r in records.values())
    rows = starts(attempts(log))
    assert sorted(r["cores"] for r in rows) == [[cores[0]], [cores[1]]]
    assert {r["threads"] for r in rows} == {"1"} and {r["cuda"] for r in rows} == {""}


def test_one_balancer_per_queue(tmp_path):
    queue = tmp_path / "q"
    first = Balancer(queue, gpus(tmp_path, 16), log=None)
    first.open()
    try:
        with pytest.raises(JobError, match=r"a balancer is already running on .* \(pid \d+"):
            Balancer(queue, gpus(tmp_path, 16), log=None).open()
    finally:
        first.close()


def test_a_killed_balancer_restarts_without_a_lost_or_duplicated_job(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    inventory = gpus(tmp_path, 16, 16)
    # 10 GiB each: one per GPU at a time, so two run and two wait when the balancer dies.
    ids = [
        submit(
            Job(command=fake("--record", log, "--sleep", 2.5), memory_bytes=10 * GiB), queue=queue
        )
        for _ in range(4)
    ]
    balancer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jaxlm.jobs",
            "run",
            f"--queue={queue}",
            f"--inventory={inventory}",
            "--poll=0.05",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while len(starts(attempts(log))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    balancer.kill()  # SIGKILL: no clean-up at all
    balancer.wait()
    first, second = (r["job"] for r in starts(attempts(log)))
    # While no balancer runs, one of its jobs dies too (wrapper and all, with SIGKILL).
    victim = Journal(queue).records()[first]
    lock = queue / "run" / f"{first}.{victim.attempt}.lock"
    os.killpg(json.loads(lock.read_text())["pid"], signal.SIGKILL)
    records = balance(queue, inventory)
    assert sorted(records) == sorted(ids) and all(r.state == "finished" for r in records.values())
    rows = attempts(log)
    # The survivor was adopted: one start, one end. The victim started again (it would resume
    # from its workdir). The two that waited ran once each.
    assert len(starts(rows, second)) == 1 and len(ends(rows, second)) == 1
    assert records[second].history == ["finished"]
    assert len(starts(rows, first)) == 2 and len(ends(rows, first)) == 1
    assert records[first].history == ["lost", "finished"]
    for job_id in ids:
        if job_id not in (first, second):
            assert len(starts(rows, job_id)) == 1 and records[job_id].history == ["finished"]
    submits = [e for e in Journal(queue).read() if e["event"] == "submit"]
    assert len(submits) == 4
    # Never more than one of these 10 GiB jobs on a GPU at a time.
    for gpu in ("0", "1"):
        spans = sorted(
            (start["time"], end["time"])
            for start in starts(rows)
            for end in rows
            if start["cuda"] == gpu and end["event"] == "end" and end["pid"] == start["pid"]
        )
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_policy_headroom_changes_the_fraction(tmp_path):
    queue, log = tmp_path / "q", tmp_path / "attempts.jsonl"
    submit(Job(command=fake("--record", log), memory_bytes=4 * GiB), queue=queue)
    balance(queue, gpus(tmp_path, 16), policy=Policy(headroom=0.0))
    assert starts(attempts(log))[0]["fraction"] == "0.250"
