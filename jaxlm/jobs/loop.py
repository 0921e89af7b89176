"""The balancer: one process per queue that places queued jobs, watches them and records how
each attempt ended.

Each step it reads what others appended to the journal (submissions, cancels), polls its
attempts, journals their ends (:func:`jaxlm.jobs.outcomes.judge` decides what each means),
measures the memory of jobs that need it (one dry run at a time, in the background), and starts
the queued jobs that fit, one after another in submission order: each start is journaled, with
its reservation, before its process starts and before the next job is placed, so two jobs
never race for the same memory.

When it starts, attempts the journal says are running are adopted: still running ones are
watched to their end, ended ones are judged by their exit files, and lost ones are started
again (they resume from their workdirs). Stopping the balancer (Ctrl-C, SIGTERM, SIGKILL)
leaves its jobs running; the next balancer adopts them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlm.alerts import Alerter
from jaxlm.errors import JobError
from jaxlm.jobs.balancer import Placement, Policy, Running, Unplaceable
from jaxlm.jobs.inventory import Device, Inventory
from jaxlm.jobs.local import Attempt, LocalBackend
from jaxlm.jobs.measure import Probe
from jaxlm.jobs.outcomes import Retries, judge, log_tail
from jaxlm.jobs.queue import FINAL, JobRecord, Journal, apply, format_size, replay

LOCK = "balancer.lock"


class Balancer:
    """Runs a queue's jobs over a device inventory (or a Ray cluster).

    Args:
      queue: the queue folder.
      inventory: an :class:`~jaxlm.jobs.inventory.Inventory` or its source (``"auto"``,
        ``"nvml"``, ``"cpu"``, a JSON file).
      backend: ``"local"`` (processes on this machine) or ``"ray"``.
      address: the Ray cluster's address (``backend="ray"``; None: start a local one).
      gpu_memory: bytes of each GPU of the Ray cluster, to turn needs into fractions
        (default: this machine's GPUs, if it has any).
      policy: how devices are shared (default: ``Policy()``).
      retries: how often each kind of failure is retried (default: ``Retries()``).
      poll: seconds between steps.
      cancel_grace: seconds a cancelled job has to stop after its SIGTERM before SIGKILL.
      log: where progress lines go (default: printed).
      alert_command: a shell command run (in the background, :class:`jaxlm.alerts.Alerter`)
        when a job fails for good (``JAXLM_EVENT=failure``) or an attempt vanished without a
        status (``crash``); ``JAXLM_WORKDIR`` is the job's workdir, ``JAXLM_MESSAGE`` names
        the job and why.

    Example:
      >>> import tempfile
      >>> from jaxlm.jobs.queue import Job
      >>> folder = tempfile.mkdtemp()
      >>> job_id = Journal(folder).submit(Job(command=("echo", "hello")))
      >>> records = Balancer(folder, "cpu", poll=0.05, log=None).run(until_done=True)
      >>> records[job_id].state, open(f"{folder}/logs/{job_id}.log").read().splitlines()[-1]
      ('finished', 'hello')
    """

    def __init__(
        self,
        queue: str | os.PathLike,
        inventory: Inventory | str = "auto",
        *,
        backend: str = "local",
        address: str | None = None,
        gpu_memory: int | None = None,
        policy: Policy | None = None,
        retries: Retries | None = None,
        poll: float = 1.0,
        cancel_grace: float = 60.0,
        log: Callable[[str], None] | None = print,
        alert_command: str | None = None,
    ):
        self.folder = Path(queue).absolute()
        self.journal = Journal(self.folder)
        self.policy, self.retries = policy or Policy(), retries or Retries()
        self.poll = poll
        self.cancel_grace = cancel_grace
        self._log = log
        self._alert = Alerter(alert_command, self.folder, self._say) if alert_command else None
        inv = inventory if isinstance(inventory, Inventory) else Inventory(inventory)
        if backend == "local":
            self.backend: Any = LocalBackend(self.folder, inv, self.policy)
        elif backend == "ray":
            from jaxlm.jobs.ray_backend import RayBackend

            self.backend = RayBackend(self.folder, address, self.policy, inv, gpu_memory)
        else:
            raise JobError(f"backend: expected local or ray, got {backend!r}")
        self.records: dict[str, JobRecord] = {}
        self.attempts: dict[str, Attempt] = {}
        self._probe: tuple[str, Probe] | None = None
        self._drains: dict[str, tuple[str, ...]] = {}
        self._lock_fd: int | None = None
        self._stop = threading.Event()

    # -- the loop ---------------------------------------------------------------------------

    def run(self, until_done: bool = False, timeout: float | None = None) -> dict[str, JobRecord]:
        """Balances until stopped (Ctrl-C, SIGTERM, :meth:`stop`), or until no job is queued or
        running (``until_done``), or for ``timeout`` seconds.

        Returns:
          The records as the journal has them when it stops.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = self._handle_sigterm()
        try:
            self.open()
            while not self._stop.is_set():
                busy = self.step()
                if until_done and not busy:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                self._stop.wait(self.poll)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.records

    def stop(self) -> None:
        """Makes :meth:`run` return after the current step (from another thread)."""
        self._stop.set()

    def open(self) -> None:
        """Takes the queue's balancer lock, replays the journal and adopts running attempts.

        Raises:
          JobError: another balancer runs on this queue (the message names it).
        """
        self._lock_fd = _take(self.folder)
        self.records = replay(self.journal.read())
        for record in self.records.values():
            if record.state == "running":
                attempt = self.backend.adopt(record)
                self.attempts[record.id] = attempt
                self._say(f"job {record.id}: adopting attempt {attempt.number}")

    def close(self) -> None:
        """Releases the lock; running attempts go on (the next balancer adopts them)."""
        if self._probe is not None:
            self._probe[1].stop()
            self._probe = None
        self.backend.close()
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.attempts:
            ids = ", ".join(sorted(self.attempts, key=_order))
            self._say(f"stopping; jobs {ids} go on running, and the next balancer adopts them")

    def step(self) -> bool:
        """One round: new events, ended attempts, cancels, measurements, starts.

        Returns:
          Whether any job is still queued or running.
        """
        for event in self.journal.read_new():
            apply(self.records, event)
        self._watch()
        self._measure()
        self._start()
        return bool(self.attempts) or any(r.state not in FINAL for r in self.records.values())

    # -- one step's parts -------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> None:
        for e in self.journal.append(event):
            apply(self.records, e)

    def _watch(self) -> None:
        now = time.time()
        for job_id, attempt in list(self.attempts.items()):
            ended, code = self.backend.poll(attempt)
            record = self.records[job_id]
            if ended:
                del self.attempts[job_id]
                self._ended(record, attempt, code)
            elif record.cancel_requested:
                if attempt.signalled is None:
                    self.backend.terminate(attempt)
                    attempt.signalled = now
                    self._say(f"job {job_id}: cancelling (SIGTERM)")
                elif now - attempt.signalled > self.cancel_grace:
                    self.backend.terminate(attempt, force=True)

    def _ended(self, record: JobRecord, attempt: Attempt, code: int | None) -> None:
        tail = log_tail(attempt.log, attempt.log_offset)
        verdict = judge(code, tail, record, self.retries, cancelled=record.cancel_requested)
        self._emit(
            {
                "event": "exit",
                "id": record.id,
                "attempt": attempt.number,
                "code": code,
                "outcome": verdict.outcome,
                "state": verdict.state,
                "retry": verdict.retry,
                "message": verdict.message,
            }
        )
        first = verdict.message.splitlines()[0] if verdict.message else verdict.outcome
        if self._alert is not None and (verdict.state == "failed" or verdict.outcome == "lost"):
            self._alert(
                {
                    "event": "failure" if verdict.state == "failed" else "crash",
                    "step": "",
                    "message": f"job {record.id} attempt {attempt.number}: {first}",
                    "job": record.id,
                    "workdir": str(_workdir(record)),
                }
            )
        if verdict.retry is not None:
            self._say(f"job {record.id}: attempt {attempt.number} {first}; queued again")
        elif verdict.state == "finished":
            self._say(f"job {record.id}: finished (attempt {attempt.number})")
        else:
            self._say(f"job {record.id}: {verdict.state} (attempt {attempt.number}): {first}")

    def _fail(self, record: JobRecord, message: str) -> None:
        self._emit(
            {
                "event": "exit",
                "id": record.id,
                "attempt": 0,
                "code": None,
                "outcome": "failed",
                "state": "failed",
                "retry": None,
                "message": message,
            }
        )
        self._say(f"job {record.id}: failed: {message.splitlines()[0]}")

    def _measure(self) -> None:
        """One dry run at a time, for the next queued GPU job whose need is unknown."""
        if self._probe is not None:
            job_id, probe = self._probe
            if not probe.done():
                return
            self._probe = None
            record = self.records.get(job_id)
            if record is None or record.state != "queued":
                probe.stop()
                return
            try:
                need = probe.result()
            except JobError as e:
                self._fail(record, str(e))
                return
            self._emit({"event": "measured", "id": job_id, "memory_bytes": need})
            self._say(f"job {job_id}: its dry run needs {format_size(need)} per device")
        if self.backend.kind != "gpu":
            return
        for record in self._queued():
            if record.need is None and record.job.measured():
                gpus = self._emptiest(record.job.gpus or self.policy.gpus_per_job)
                self._probe = (record.id, Probe(record.job, gpus))
                self._say(f"job {record.id}: measuring its memory (dry run)")
                return

    def _start(self) -> None:
        """Starts the queued jobs that fit, in submission order, one after another."""
        waiting = [r for r in self._queued() if r.not_before <= time.time() and self._measured(r)]
        if not waiting:
            return
        for job_id in list(self._drains):
            if self.records[job_id].state != "queued":
                del self._drains[job_id]
        devices = self.backend.devices()
        now = time.time()  # one clock for the round: jobs started in it count as started together
        running = [self._running(a, now) for a in self.attempts.values()]
        for record in waiting:
            blocked = frozenset(
                k for other, keys in self._drains.items() if other != record.id for k in keys
            )
            try:
                placement = self.backend.place(record, devices, running, blocked)
            except Unplaceable as e:
                self._fail(record, f"it cannot run on this inventory: {e}")
                continue
            if placement is None:
                self._drain_for(record, devices, running, blocked)
                continue
            self._drains.pop(record.id, None)
            self._launch(record, placement)
            self.attempts[record.id].started = now
            running.append(self._running(self.attempts[record.id], now))

    def _launch(self, record: JobRecord, placement: Placement) -> None:
        number = record.attempt + 1
        attempt = self.backend.prepare(record, number, placement)
        info = {**attempt.info(), "host": socket.gethostname()}
        self._emit({"event": "start", "id": record.id, "attempt": number, "placement": info})
        self.backend.launch(record, attempt)
        self.attempts[record.id] = attempt
        where = ",".join(placement.devices)
        if placement.fraction is not None:
            where += f" (memory fraction {placement.fraction:.3f})"
        if placement.cores:
            where += f" (cores {','.join(map(str, placement.cores))})"
        self._say(f"job {record.id}: attempt {number} started on {where}")

    # -- helpers ----------------------------------------------------------------------------

    def _queued(self) -> list[JobRecord]:
        queued = [r for r in self.records.values() if r.state == "queued"]
        return sorted(queued, key=lambda r: _order(r.id))

    def _measured(self, record: JobRecord) -> bool:
        """Whether the record's need is known, or need not be."""
        return record.need is not None or not record.job.measured() or self.backend.kind != "gpu"

    def _running(self, attempt: Attempt, now: float) -> Running:
        record = self.records[attempt.id]
        pid = self.backend.pid(attempt) if self.backend.kind == "gpu" else None
        return attempt.placement.running(self._remaining(record, attempt, now), pid)

    def _remaining(self, record: JobRecord, attempt: Attempt, now: float) -> float:
        """Seconds of work the attempt has left: its run's ETA, else its expected time less
        the time it has run."""
        if record.job.workdir:
            try:
                status = json.loads((Path(record.job.workdir) / "status.json").read_text())
                eta = status.get("eta_seconds") if status.get("state") == "running" else None
                if isinstance(eta, int | float) and eta >= 0:
                    return float(eta)
            except (OSError, ValueError, AttributeError):
                pass
        expected = record.job.seconds or self.policy.default_seconds
        return max(expected - (now - attempt.started), 0.1 * expected)

    def _drain_for(
        self,
        record: JobRecord,
        devices: list[Device],
        running: list[Running],
        blocked: frozenset[str],
    ) -> None:
        """Keeps devices free of new jobs for a waiting job that needs them to itself (alone)
        or needs several at once, so that smaller jobs do not starve it."""
        if self.backend.kind != "gpu" or record.id in self._drains:
            return
        count = record.job.gpus or self.policy.gpus_per_job
        if not (record.alone or record.need is None or count > 1):
            return
        work = {d.key: 0.0 for d in devices if d.key not in blocked}
        for r in running:
            for key in r.devices:
                if key in work:
                    work[key] += r.remaining
        keys = sorted(work, key=lambda k: (work[k], k))[:count]
        if len(keys) == count:
            self._drains[record.id] = tuple(keys)
            self._say(f"job {record.id}: keeping {','.join(keys)} free for it")

    def _emptiest(self, count: int) -> list[int]:
        """The indices of the ``count`` GPUs with the most memory free now."""
        devices = self.backend.devices()
        devices.sort(key=lambda d: d.memory_used - d.memory_total)
        return [d.index for d in devices[:count]]

    def _say(self, line: str) -> None:
        if self._log is not None:
            self._log(f"[{time.strftime('%H:%M:%S')}] {line}")

    def _handle_sigterm(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum: int, frame: object) -> None:
            del signum, frame
            self._stop.set()

        return signal.signal(signal.SIGTERM, stop)


def _workdir(record: JobRecord) -> Path:
    """Where a job's run writes (its folder relative to the job's own working folder), or
    the job's log folder for a plain command."""
    job = record.job
    if not job.workdir:
        return Path.cwd()
    folder = Path(job.workdir).expanduser()
    return folder if folder.is_absolute() else Path(job.cwd or Path.cwd()) / folder


def _order(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (1 << 62, job_id)


def _take(folder: Path) -> int:
    """The queue's balancer lock, held by this process; refused while another holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 1.0  # a status or cancel looking at the lock holds it briefly
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise JobError(
                    f"a balancer is already running on {folder} ({balancer_holder(folder)})"
                ) from None
            time.sleep(0.1)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    return fd


def balancer_holder(folder: str | os.PathLike) -> str:
    """Who runs the queue's balancer, as ``pid P on host H``, from its lock file."""
    try:
        info = json.loads((Path(folder) / LOCK).read_text())
        return f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def balancer_running(folder: str | os.PathLike) -> bool:
    """Whether a balancer holds the queue's lock now."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
