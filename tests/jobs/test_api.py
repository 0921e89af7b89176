"""The Python API a search drives: submit -> id, wait (with a balancer in another thread),
status, cancel, logs; and the errors of a wait that cannot end."""

from __future__ import annotations

import threading

import pytest

from jaxlm import jobs
from jaxlm.errors import JobError
from tests.jobs.fakes import GiB, fake, gpus


def test_submit_then_wait_while_a_balancer_runs_in_a_thread(tmp_path):
    queue = tmp_path / "q"
    ids = [
        jobs.submit(jobs.Job(command=fake("--exit", code), memory_bytes=GiB), queue=queue)
        for code in (0, 0, 5)
    ]
    balancer = jobs.Balancer(queue, gpus(tmp_path, 16), poll=0.05, log=None)
    thread = threading.Thread(target=balancer.run)
    thread.start()
    try:
        done = jobs.wait(ids, queue=queue, timeout=30, poll=0.05)
        assert [done[i].state for i in ids] == ["finished", "finished", "failed"]
        # Jobs submitted while it runs are picked up too.
        late = jobs.submit(jobs.Job(command=fake(), memory_bytes=GiB), queue=queue)
        assert jobs.wait(late, queue=queue, timeout=30, poll=0.05)[late].state == "finished"
    finally:
        balancer.stop()
        thread.join()
    assert jobs.status(ids[2], queue=queue).exit_code == 5
    assert set(jobs.status(queue=queue)) == {*ids, late}
    assert "line 2 of the output" in jobs.logs(ids[0], queue=queue, lines=1)


def test_a_wait_without_a_balancer_or_past_its_timeout_says_so(tmp_path):
    queue = tmp_path / "q"
    job_id = jobs.submit(jobs.Job(command=fake()), queue=queue)
    with pytest.raises(JobError, match="no balancer is running on .*: start one with"):
        jobs.wait(job_id, queue=queue, balancer_grace=0.2, poll=0.05)
    with pytest.raises(TimeoutError, match=f"jobs {job_id} still queued or running"):
        jobs.wait(job_id, queue=queue, timeout=0.2, poll=0.05)
    with pytest.raises(JobError, match="job 9: no such job"):
        jobs.status("9", queue=queue)
    jobs.cancel(job_id, queue=queue)
    with pytest.raises(JobError, match=f"job {job_id}: already cancelled"):
        jobs.cancel(job_id, queue=queue)


def test_run_in_this_process_until_the_queue_is_empty(tmp_path):
    queue = tmp_path / "q"
    job_id = jobs.submit(jobs.Job(command=fake()), queue=queue)
    records = jobs.run(queue=queue, inventory="cpu", poll=0.05, log=None)
    assert records[job_id].state == "finished"
