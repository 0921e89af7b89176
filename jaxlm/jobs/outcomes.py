"""What a job's end means, and what its next attempt gets.

Exit statuses follow ``python -m jaxlm.train``: 0 finished; 143 preempted by SIGTERM (it saved
a checkpoint, so it is queued again and resumes from its workdir); out of memory (``Out of
memory`` or ``RESOURCE_EXHAUSTED`` in its log) is retried first with more memory, then alone on
a device, then recorded as failed; exit 2 with "is being written by" means its workdir is still
held by an earlier process of it, so it is queued again after a pause; any other status is a
failure recorded with the tail of its log. An attempt whose wrapper vanished without writing its
status (the machine went down, or someone killed it with SIGKILL) is ``lost`` and started again.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

from jaxlm.jobs.queue import JobRecord

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")
BUSY_MARKER = "is being written by"
PREEMPTED = (143, -signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Retries:
    """How often each kind of end is retried before the job is recorded as failed.

    Attributes:
      oom: attempts that ran out of memory (first with ``oom_growth`` times the memory, then
        alone on a device).
      oom_growth: how much more memory the first retry after running out gets.
      preempted: preemptions (each resumes from the workdir).
      lost: attempts that vanished without a status.
      busy: starts refused because an earlier process still held the workdir.
      busy_delay: seconds to wait before starting again after such a refusal.
    """

    oom: int = 2
    oom_growth: float = 1.5
    preempted: int = 100
    lost: int = 10
    busy: int = 60
    busy_delay: float = 5.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """An attempt's end, judged.

    Attributes:
      outcome: ``finished``, ``preempted``, ``oom``, ``busy``, ``lost``, ``cancelled``,
        ``failed``.
      state: the job's state if it is not retried (``finished``, ``failed``, ``cancelled``).
      retry: what its next attempt gets (``alone``, ``memory_scale``, ``delay``), or None.
      message: a line for the status table, then the tail of the log for a failure.
    """

    outcome: str
    state: str
    retry: dict[str, Any] | None = None
    message: str = ""


def judge(
    code: int | None,
    tail: str,
    record: JobRecord,
    retries: Retries = Retries(),
    *,
    cancelled: bool = False,
) -> Verdict:
    """What an attempt's exit status and log tail mean for its job.

    Args:
      code: its exit status; None when it vanished without one.
      tail: the end of this attempt's log.
      record: the job (its earlier outcomes decide whether it is retried).
      retries: the limits.
      cancelled: it was cancelled while it ran.

    Returns:
      The verdict.

    Example:
      >>> from jaxlm.jobs.queue import Job
      >>> record = JobRecord("1", Job(command=("train",)), need=2**30)
      >>> judge(143, "", record).retry, judge(0, "", record).state
      ({}, 'finished')
      >>> judge(1, "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", record).retry
      {'memory_scale': 1.5}
      >>> judge(1, "Traceback ...\\nValueError: bad", record).message
      'exit 1: ValueError: bad\\nTraceback ...\\nValueError: bad'
    """
    last = _last_line(tail)
    if code == 0:
        return Verdict("finished", "finished")
    if cancelled:
        return Verdict("cancelled", "cancelled", message=f"stopped (exit {code})")
    if code is None:
        return _again(record, "lost", retries.lost, {}, "vanished without an exit status")
    if code in PREEMPTED:
        return _again(record, "preempted", retries.preempted, {}, "preempted")
    if any(marker in tail for marker in OOM_MARKERS):
        return _oom(record, retries, f"exit {code}: {last}", tail)
    if code == 2 and BUSY_MARKER in tail:
        delay = {"delay": retries.busy_delay}
        return _again(record, "busy", retries.busy, delay, f"its workdir was busy: {last}")
    return Verdict("failed", "failed", None, f"exit {describe_code(code)}: {last}\n{tail}".strip())


def _again(record: JobRecord, outcome: str, limit: int, retry: dict[str, Any], why: str) -> Verdict:
    if record.count(outcome) >= limit:
        return Verdict(outcome, "failed", None, f"{why}, {limit + 1} times: giving up")
    return Verdict(outcome, "queued", retry, why)


def _oom(record: JobRecord, retries: Retries, why: str, tail: str) -> Verdict:
    placement = record.placement or {}
    on_cpu = "cpu" in placement.get("devices", ())
    if record.alone or placement.get("alone") or record.count("oom") >= retries.oom:
        return Verdict("oom", "failed", None, f"out of memory alone on its device: {why}\n{tail}")
    if record.memory_scale == 1.0 and not on_cpu and record.need is not None:
        scale = record.memory_scale * retries.oom_growth
        return Verdict("oom", "queued", {"memory_scale": scale}, f"out of memory: {why}")
    return Verdict("oom", "queued", {"alone": True}, f"out of memory: {why}")


def describe_code(code: int) -> str:
    """``137`` -> ``"137 (SIGKILL)"``; a status that is no signal's stays a number.

    Example:
      >>> describe_code(137), describe_code(1)
      ('137 (SIGKILL)', '1')
    """
    number = -code if code < 0 else code - 128
    if code < 0 or 128 < code < 160:
        try:
            return f"{code} ({signal.Signals(number).name})"
        except ValueError:
            pass
    return str(code)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def log_tail(path: str | Path, offset: int = 0, lines: int = 20, max_bytes: int = 65536) -> str:
    """The last ``lines`` lines of a log from byte ``offset`` on (one attempt's part of it).

    Example:
      >>> import tempfile
      >>> log = Path(tempfile.mkdtemp()) / "1.log"
      >>> _ = log.write_text("first attempt\\nsecond attempt\\nit ends\\n")
      >>> log_tail(log, offset=14)
      'second attempt\\nit ends'
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(offset, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
