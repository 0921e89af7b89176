"""The job queue from Python: ``submit(job) -> id``, ``status``, ``wait``, ``cancel``, ``logs``,
and ``run`` (the balancer in this process).

A queue is a folder (``queue=``; default ``$JAXLM_JOBS_DIR`` or ``runs/jobs``). Submitting
only appends to its journal, so it works whether or not a balancer runs; ``wait`` needs one,
started with ``python -m jaxlm.jobs run`` or :func:`run`::

    from jaxlm import jobs

    ids = [jobs.submit(jobs.Job(config="lstm:smoke", workdir=f"runs/lr{lr}",
                                overrides={"optimizer.learning_rate": lr}))
           for lr in (1e-3, 3e-3)]
    jobs.run(inventory="cpu")           # until every job ended; or a balancer elsewhere
    done = jobs.wait(ids)               # {id: JobRecord}, each finished, failed or cancelled
    print({i: r.state for i, r in done.items()})
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxlm.errors import JobError
from jaxlm.jobs.local import stop_attempt
from jaxlm.jobs.loop import Balancer, balancer_running
from jaxlm.jobs.queue import ACTIVE, FINAL, Job, JobRecord, Journal

DEFAULT_QUEUE = "runs/jobs"


def queue_folder(queue: str | os.PathLike | None = None) -> Path:
    """The queue folder: ``queue``, else ``$JAXLM_JOBS_DIR``, else ``runs/jobs`` (absolute)."""
    return Path(queue or os.environ.get("JAXLM_JOBS_DIR") or DEFAULT_QUEUE).absolute()


def submit(job: Job, *, queue: str | os.PathLike | None = None) -> str:
    """Adds a job to the queue.

    Args:
      job: what to run.
      queue: the queue folder.

    Returns:
      The job's id.

    Raises:
      JobError: another queued or running job has the same workdir.

    Example:
      >>> import tempfile
      >>> submit(Job(command=("echo", "hi")), queue=tempfile.mkdtemp())
      '1'
    """
    return Journal(queue_folder(queue)).submit(job)


def status(
    job_id: str | None = None, *, queue: str | os.PathLike | None = None
) -> JobRecord | dict[str, JobRecord]:
    """A job's record, or every job's (by id, in submission order).

    Raises:
      JobError: there is no job ``job_id``.

    Example:
      >>> import tempfile
      >>> folder = tempfile.mkdtemp()
      >>> job_id = submit(Job(command=("true",)), queue=folder)
      >>> status(job_id, queue=folder).state
      'queued'
    """
    records = Journal(queue_folder(queue)).records()
    if job_id is None:
        return records
    if str(job_id) not in records:
        raise JobError(f"job {job_id}: no such job in {queue_folder(queue)}")
    return records[str(job_id)]


def wait(
    job_ids: str | int | Iterable[str] | None = None,
    *,
    queue: str | os.PathLike | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
    balancer_grace: float = 30.0,
) -> dict[str, JobRecord]:
    """Waits until the jobs are finished, failed or cancelled.

    Args:
      job_ids: one id, several, or None for every job in the queue.
      queue: the queue folder.
      timeout: seconds to wait at most (None: no limit).
      poll: seconds between looks at the journal.
      balancer_grace: seconds without a balancer on the queue, while jobs wait, before giving
        up (so a forgotten ``run`` is an error, not a hang).

    Returns:
      The jobs' records, by id.

    Raises:
      TimeoutError: ``timeout`` passed first.
      JobError: an unknown id, or no balancer ran for ``balancer_grace`` seconds.
    """
    folder = queue_folder(queue)
    if isinstance(job_ids, str | int):
        job_ids = [str(job_ids)]
    wanted = None if job_ids is None else [str(i) for i in job_ids]
    start = time.monotonic()
    alone_since = None
    while True:
        records = Journal(folder).records()
        ids = list(records) if wanted is None else wanted
        for job_id in ids:
            if job_id not in records:
                raise JobError(f"job {job_id}: no such job in {folder}")
        if all(records[i].state in FINAL for i in ids):
            return {i: records[i] for i in ids}
        now = time.monotonic()
        if balancer_running(folder):
            alone_since = None
        else:
            alone_since = now if alone_since is None else alone_since
            if now - alone_since > balancer_grace:
                raise JobError(
                    f"no balancer is running on {folder}: start one with "
                    f"python -m jaxlm.jobs run --queue={folder}"
                )
        if timeout is not None and now - start > timeout:
            pending = [i for i in ids if records[i].state not in FINAL]
            raise TimeoutError(f"jobs {', '.join(pending)} still queued or running")
        time.sleep(poll)


def cancel(job_id: str, *, queue: str | os.PathLike | None = None) -> JobRecord:
    """Cancels a job: a queued one is dropped, a running one stopped with SIGTERM (a training
    run checkpoints first).

    Returns:
      The job's record as it was.

    Raises:
      JobError: no such job, or it already ended.

    Example:
      >>> import tempfile
      >>> folder = tempfile.mkdtemp()
      >>> job_id = submit(Job(command=("true",)), queue=folder)
      >>> _ = cancel(job_id, queue=folder)
      >>> status(job_id, queue=folder).state
      'cancelled'
    """
    folder = queue_folder(queue)
    record = status(job_id, queue=folder)
    assert isinstance(record, JobRecord)
    if record.state not in ACTIVE:
        raise JobError(f"job {job_id}: already {record.state}")
    Journal(folder).append({"event": "cancel", "id": record.id})
    if record.state == "running" and not balancer_running(folder):
        stop_attempt(folder, record.id, record.attempt)  # the next balancer records its end
    return record


def logs(job_id: str, *, queue: str | os.PathLike | None = None, lines: int | None = None) -> str:
    """A job's log, every attempt's output under its header line (the last ``lines`` only)."""
    folder = queue_folder(queue)
    record = status(job_id, queue=folder)
    assert isinstance(record, JobRecord)
    path = folder / "logs" / f"{record.id}.log"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) if lines else text


def run(
    *,
    queue: str | os.PathLike | None = None,
    inventory: str = "auto",
    until_done: bool = True,
    **options: Any,
) -> dict[str, JobRecord]:
    """Runs the queue's balancer in this process (see :class:`jaxlm.jobs.loop.Balancer` for
    ``options``), by default until no job is queued or running.

    Returns:
      Every job's record when it stops.
    """
    return Balancer(queue_folder(queue), inventory, **options).run(until_done=until_done)
