"""The job balancer's view of runs: each run folder that was a job's workdir gets the job's
record (:mod:`jaxlm.jobs.queue`'s journal, replayed), and its state where that says more.

The run's own ``status.json`` says what its last process did; the journal says what the
balancer will do next. So a preempted run the balancer will restart is "queued", a job
cancelled before it ran is "cancelled", and a run whose process died (crashed) or was preempted
for the last time, whose job the balancer gave up on, is "failed".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxlm import monitor
from jaxlm.errors import JaxlmError
from jaxlm.runs.read import Run, Warn, stderr

# Run states the journal may refine (the run's process is not running, or never told).
_IDLE = ("crashed", "unknown", "preempted", "interrupted", "failed")


def default_queues() -> list[Path]:
    """The queue folders a run may have come from: ``$JAXLM_JOBS_DIR`` and ``runs/jobs``
    (:func:`jaxlm.jobs.api.queue_folder`'s defaults), those that exist."""
    names = [os.environ.get("JAXLM_JOBS_DIR"), "runs/jobs"]
    return [Path(n).absolute() for n in names if n and (Path(n) / "journal.jsonl").is_file()]


def job_records(journals: Iterable[Path], warn: Warn = stderr) -> dict[Path, dict[str, Any]]:
    """The last job of each workdir in these journals, by the workdir's resolved path.

    Args:
      journals: ``journal.jsonl`` files (or their queue folders).
      warn: told about a journal that cannot be replayed.

    Returns:
      ``{workdir: {"queue", "id", "state", "outcome", "attempt", "message"}}``.
    """
    from jaxlm.jobs.queue import Journal

    out: dict[Path, dict[str, Any]] = {}
    for journal in journals:
        folder = journal.parent if journal.name == "journal.jsonl" else journal
        try:
            records = Journal(folder).records()
        except (JaxlmError, KeyError, TypeError, ValueError) as e:
            warn(f"{folder}/journal.jsonl: cannot replay it ({e}); its jobs are not shown")
            continue
        for record in records.values():
            if not record.job.workdir:
                continue
            workdir = Path(record.job.cwd or folder, record.job.workdir).resolve()
            out[workdir] = {
                "queue": str(folder),
                "id": record.id,
                "state": record.state,
                "outcome": record.outcome,
                "attempt": record.attempt,
                "message": record.message.splitlines()[0] if record.message else "",
            }
    return out


def attach(runs: list[Run], records: dict[Path, dict[str, Any]]) -> None:
    """Gives each run its job record, and the job's state where it says more (in place).

    Example:
      >>> run = Run(Path("/tmp/r"), "r", {}, {"state": "preempted"}, [], "preempted")
      >>> attach([run], {Path("/tmp/r").resolve(): {"state": "queued", "id": "3"}})
      >>> run.state, run.job["id"]
      ('queued', '3')
    """
    for run in runs:
        record = records.get(run.path.resolve())
        if record is None:
            continue
        run.job = record
        run.state = refine(run.state, record["state"])


def refine(run_state: str, job_state: str) -> str:
    """The state a table shows for a run whose job is in ``job_state``.

    Example:
      >>> refine("preempted", "queued"), refine("crashed", "failed"), refine("running", "queued")
      ('queued', 'failed', 'running')
    """
    if run_state in (*monitor.ACTIVE_STATES, "stalled", "finished", "stopped"):
        return run_state
    if job_state in ("queued", "cancelled"):
        return job_state
    if job_state == "failed" and run_state in _IDLE:
        return "failed"
    return run_state
