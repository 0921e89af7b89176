"""Jobs as processes on this machine: launched through the wrapper, watched, adopted, stopped.

Each attempt runs as ``python -I -S jaxlm/jobs/_wrap.py --lock L --exit E -- COMMAND`` in a
session of its own (a Ctrl-C to the balancer does not reach it, and it outlives the balancer),
its output appended to ``logs/<id>.log``. Whether an attempt still runs is told by its lock
(held while its wrapper lives), how it ended by its exit file, the same way for the balancer's
own children and for attempts a previous balancer started and this one adopted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jaxlm.jobs import _wrap
from jaxlm.jobs.balancer import Placement, Policy, Running, place
from jaxlm.jobs.inventory import Device, Inventory
from jaxlm.jobs.queue import JobRecord

WRAPPER = Path(_wrap.__file__).resolve()
JAXLM_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this jaxlm package


@dataclasses.dataclass
class Attempt:
    """One attempt of a job being watched.

    Attributes:
      id: the job's id.
      number: the attempt's number (1 for the first).
      placement: where it runs.
      log: its job's log file.
      log_offset: where this attempt's output starts in the log.
      started: when it was started.
      process: the wrapper, when this balancer started it (None when adopted).
      handle: the backend's own handle (a Ray task's reference).
      signalled: when it was asked to stop (a cancel), None before.
    """

    id: str
    number: int
    placement: Placement
    log: Path
    log_offset: int
    started: float
    process: subprocess.Popen | None = None
    handle: object = None
    signalled: float | None = None

    def info(self) -> dict:
        """What the journal's ``start`` event records of it."""
        return {**self.placement.to_dict(), "log_offset": self.log_offset}


def with_jaxlm_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this jaxlm first on ``PYTHONPATH``, so a config job runs the balancer's."""
    path = os.pathsep.join(p for p in (str(JAXLM_ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


def run_files(folder: Path, job_id: str, number: int) -> tuple[Path, Path]:
    """The lock and exit file of attempt ``number`` of job ``job_id``."""
    return folder / "run" / f"{job_id}.{number}.lock", folder / "run" / f"{job_id}.{number}.exit"


def open_attempt(folder: Path, record: JobRecord, number: int, placement: Placement) -> Attempt:
    """A new attempt, its header line appended to the job's log (``logs/<id>.log``)."""
    log = folder / "logs" / f"{record.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    (folder / "run").mkdir(exist_ok=True)
    where = ",".join(placement.devices)
    if placement.fraction is not None:
        where += f" fraction {placement.fraction:.3f}"
    if placement.cores:
        where += f" cores {','.join(map(str, placement.cores))}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(log, "ab") as f:
        f.write(f"=== attempt {number} on {where} at {stamp}\n".encode())
        offset = f.tell()
    return Attempt(record.id, number, placement, log, offset, time.time())


class LocalBackend:
    """Runs attempts as processes on this machine, placed over an inventory.

    Args:
      folder: the queue folder.
      inventory: where the devices come from.
      policy: the sharing rules.
    """

    name = "local"

    def __init__(self, folder: Path, inventory: Inventory, policy: Policy):
        self.folder = folder
        self.inventory = inventory
        self.policy = policy
        self.kind = inventory.kind

    def devices(self) -> list[Device]:
        """The inventory now."""
        return self.inventory.devices()

    def place(
        self,
        record: JobRecord,
        devices: list[Device],
        running: list[Running],
        blocked: frozenset[str],
    ) -> Placement | None:
        """Where the record's next attempt goes now (see :func:`jaxlm.jobs.balancer.place`)."""
        job = record.job
        return place(
            record.need,
            gpus=job.gpus,
            cores=job.cores,
            seconds=job.seconds,
            alone=record.alone,
            memory_scale=record.memory_scale,
            devices=devices,
            running=running,
            policy=self.policy,
            blocked=blocked,
        )

    def prepare(self, record: JobRecord, number: int, placement: Placement) -> Attempt:
        """Opens the attempt's part of the log (a header line); nothing runs yet."""
        return open_attempt(self.folder, record, number, placement)

    def launch(self, record: JobRecord, attempt: Attempt) -> None:
        """Starts the attempt (the journal already says it started)."""
        lock, exit_file = run_files(self.folder, record.id, attempt.number)
        job = record.job
        env = {**os.environ, **job.env, **attempt.placement.env}
        env["JAXLM_JOB_ID"], env["JAXLM_JOB_ATTEMPT"] = record.id, str(attempt.number)
        if job.config is not None:
            env = with_jaxlm_path(env)
        command = [sys.executable, "-I", "-S", str(WRAPPER), "--lock", str(lock)]
        command += ["--exit", str(exit_file)]
        if attempt.placement.cores:
            command += ["--cores", ",".join(map(str, attempt.placement.cores))]
        command += ["--", *job.argv(sys.executable)]
        with open(attempt.log, "ab") as out:
            try:
                attempt.process = subprocess.Popen(
                    command,
                    cwd=job.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:  # its folder is gone, say
                out.write(f"error: cannot start the job in {job.cwd}: {e}\n".encode())
                _wrap.write_exit(str(exit_file), {"code": 127})

    def adopt(self, record: JobRecord) -> Attempt:
        """The running attempt a previous balancer started, to be watched by this one."""
        info = record.placement or {"devices": []}
        log = self.folder / "logs" / f"{record.id}.log"
        placement = Placement.from_dict(info)
        return Attempt(
            record.id,
            record.attempt,
            placement,
            log,
            int(info.get("log_offset", 0)),
            record.started or time.time(),
        )

    def poll(self, attempt: Attempt) -> tuple[bool, int | None]:
        """``(ended, code)``: whether the attempt ended, and its exit status (None: lost)."""
        if attempt.process is not None:
            attempt.process.poll()  # reaps it
        lock, exit_file = run_files(self.folder, attempt.id, attempt.number)
        fd = _try_lock(lock)
        if fd is None:
            return False, None  # its wrapper holds the lock: running
        try:
            code = _read_exit(exit_file)
            if code is not None:
                return True, code[0]
            if attempt.process is not None and attempt.process.returncode is None:
                return False, None  # our wrapper is starting and has not taken its lock yet
            _wrap.write_exit(str(exit_file), {"abandoned": True})  # a late wrapper runs nothing
            return True, None
        finally:
            os.close(fd)

    def pid(self, attempt: Attempt) -> int | None:
        """The attempt's wrapper process while it runs, else None."""
        lock, _ = run_files(self.folder, attempt.id, attempt.number)
        return running_pid(lock)

    def terminate(self, attempt: Attempt, force: bool = False) -> None:
        """Asks the attempt to stop (SIGTERM, so a training run checkpoints); ``force``: SIGKILL
        to its whole session."""
        pid = self.pid(attempt)
        if pid is not None:
            _signal(pid, signal.SIGKILL if force else signal.SIGTERM, group=force)

    def close(self) -> None:
        """Nothing to release: attempts outlive the balancer."""


def running_pid(lock: Path) -> int | None:
    """The pid in an attempt's lock file while its wrapper holds it, else None."""
    fd = _try_lock(lock)
    if fd is not None:
        os.close(fd)
        return None
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_attempt(folder: Path, job_id: str, number: int) -> bool:
    """SIGTERM to a running attempt's wrapper (which passes it on); whether there was one."""
    pid = running_pid(run_files(folder, job_id, number)[0])
    if pid is None:
        return False
    _signal(pid, signal.SIGTERM, group=False)
    return True


def _signal(pid: int, signum: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _try_lock(path: Path) -> int | None:
    """An fd holding the lock at ``path`` (free), or None while another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the run/ folder is gone
        path.parent.mkdir(parents=True, exist_ok=True)
        return _try_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_exit(path: Path) -> tuple[int | None] | None:
    """``(code,)`` from an exit file (``(None,)`` for an abandoned attempt), or None if absent."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return (None,)
    return (data.get("code") if isinstance(data, dict) else None,)
