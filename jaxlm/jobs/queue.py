"""Jobs and the queue's journal: an append-only JSON-lines file of events, replayed into state.

A queue is a folder. ``journal.jsonl`` holds one event per line (``submit``, ``measured``,
``start``, ``exit``, ``cancel``), each appended whole under an exclusive lock and fsynced before
the writer goes on, so whatever reads it later (a restarted balancer, ``status``) replays the
same history. :func:`replay` turns the events into one :class:`JobRecord` per job; nothing else
holds state, so a balancer killed at any moment loses nothing that it had written.

Folder layout::

    journal.jsonl       the events
    balancer.lock       held by the one balancer running on the queue (flock)
    logs/<id>.log       each job's output, every attempt appended under a header line
    run/<id>.<n>.lock   held by the wrapper of attempt n while it lives (flock)
    run/<id>.<n>.exit   attempt n's exit status, written by its wrapper
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxlm.errors import JobError

JOURNAL = "journal.jsonl"
ACTIVE = ("queued", "running")
FINAL = ("finished", "failed", "cancelled")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_size(text: str | int, field: str = "size") -> int:
    """Bytes from ``"6GiB"``, ``"512M"``, ``"1.5G"``, ``"2GB"`` (decimal) or a plain number.

    Args:
      text: the size; ``G``/``GiB`` are powers of 1024, ``GB`` powers of 1000.
      field: named in the error.

    Returns:
      The size in bytes.

    Raises:
      JobError: not a size.

    Example:
      >>> parse_size("6GiB"), parse_size("512M"), parse_size(1000)
      (6442450944, 536870912, 1000)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise JobError(f"{field}: expected a size such as 6GiB or 512MiB, got {text!r}")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(math.ceil(value * _UNITS[unit]))
    if size <= 0:
        raise JobError(f"{field}: expected a positive size, got {text!r}")
    return size


def format_size(n: int | float | None) -> str:
    """``6442450944`` -> ``"6.0 GiB"``; None -> ``"-"``.

    Example:
      >>> format_size(6 * 2**30), format_size(3 * 2**20), format_size(None)
      ('6.0 GiB', '3.0 MiB', '-')
    """
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to schedule: a training config with overrides and a workdir, or a plain command.

    Attributes:
      config: a recipe file or name with its variant (``"lstm:smoke"``), run as
        ``python -m jaxlm.train``; or None for a plain ``command``.
      overrides: config fields to set, ``{"train.num_steps": 100}``.
      workdir: the run folder; a config job needs one (it resumes from it when restarted).
      command: a plain command (a tuple of arguments) instead of a config.
      memory_bytes: memory the job needs on each of its GPUs; None: measured by its dry run
        (see ``dry_run``), else a whole GPU. Unused on CPU.
      gpus: how many GPUs it runs on (data- or model-parallel jobs take several; None: the
        balancer's ``gpus_per_job``, 1 by default).
      cores: CPU cores it runs on, when there is no GPU (None: the balancer's default).
      seconds: how long it is expected to run, which balancing counts as its work (None: the
        balancer's default, or what the run's ``status.json`` says once it runs).
      name: a label for the status table.
      env: environment variables of its own (the balancer's placement variables win).
      cwd: the folder it runs in (default: where it was submitted).
      dry_run: whether its command with ``--dry_run`` prints its memory need (a
        ``DRY_RUN {"peak_bytes": ...}`` line); None: a config job's does, a command's not.

    Example:
      >>> job = Job(config="lstm:smoke", workdir="/tmp/runs/a", overrides={"seed": 3})
      >>> job.argv("python")[1:]
      ['-m', 'jaxlm.train', '--config=lstm:smoke', '--workdir=/tmp/runs/a', '--config.seed=3']
      >>> Job(command=("echo", "hi")).argv("python")
      ['echo', 'hi']
    """

    config: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    workdir: str | None = None
    command: tuple[str, ...] | None = None
    memory_bytes: int | None = None
    gpus: int | None = None
    cores: int | None = None
    seconds: float | None = None
    name: str = ""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None
    dry_run: bool | None = None

    def __post_init__(self) -> None:
        if (self.config is None) == (self.command is None):
            raise JobError("job: give either a config or a command, not both or neither")
        if self.command is not None:
            if isinstance(self.command, str) or not self.command:
                raise JobError("job.command: expected a non-empty list of arguments")
            object.__setattr__(self, "command", tuple(str(a) for a in self.command))
        if self.config is not None and not self.workdir:
            raise JobError(f"job.workdir: a config job ({self.config}) needs its own workdir")
        if self.config is None and self.overrides:
            raise JobError("job.overrides: only a config job takes overrides")
        for field in ("gpus", "cores", "memory_bytes"):
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise JobError(f"job.{field}: expected a positive integer, got {value!r}")
        if self.seconds is not None and not (
            isinstance(self.seconds, int | float) and self.seconds > 0
        ):
            raise JobError(f"job.seconds: expected a positive number, got {self.seconds!r}")
        for field in ("overrides", "env"):
            if not isinstance(getattr(self, field), dict):
                raise JobError(f"job.{field}: expected a mapping")
        object.__setattr__(self, "env", {str(k): str(v) for k, v in self.env.items()})

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command that runs the job, with ``python`` running a config job."""
        if self.command is not None:
            return list(self.command)
        args = [python, "-m", "jaxlm.train", f"--config={self.config}"]
        args.append(f"--workdir={self.workdir}")
        args += [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()]
        return args

    def measured(self) -> bool:
        """Whether its need comes from a dry run (it states none, and its command takes one)."""
        if self.memory_bytes is not None:
            return False
        return self.config is not None if self.dry_run is None else self.dry_run

    def label(self) -> str:
        """Its name, or a short description of it."""
        if self.name:
            return self.name
        if self.config is not None:
            return f"{self.config} {self.workdir}"
        return " ".join(" ".join(self.command or ()).split())[:60]  # one line

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready fields (the journal's form)."""
        data = dataclasses.asdict(self)
        if data["command"] is not None:
            data["command"] = list(data["command"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "job") -> Job:
        """A job from :meth:`to_dict`'s fields; an unknown field is an error naming it."""
        if not isinstance(data, dict):
            raise JobError(f"{where}: expected an object of job fields, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"{where}: unknown field {unknown[0]!r}; known: {sorted(known)}")
        return cls(**data)


def _flag_value(value: Any) -> str:
    """A config value as ``--config.x=`` takes it: tuples as ``(1,2)``, the rest as str."""
    if isinstance(value, tuple | list):
        return (
            "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        )
    return str(value)


@dataclasses.dataclass
class JobRecord:
    """A job's state as the journal tells it.

    Attributes:
      id: its id in the queue ("1", "2", ...).
      job: what to run.
      state: ``queued``, ``running``, ``finished``, ``failed`` or ``cancelled``.
      attempt: how many times it was started.
      need: memory it needs per GPU in bytes (stated or measured), None until known.
      alone: its next attempt runs alone on its devices (after running out of memory).
      memory_scale: its next attempt's memory is ``need`` times this.
      placement: where the current (or last) attempt runs: devices, fraction, env, cores.
      not_before: the time before which it must not start again.
      exit_code: its last attempt's exit status.
      outcome: what its last attempt's end meant (``finished``, ``preempted``, ``oom``, ...).
      message: why it failed, with the tail of its log.
      cancel_requested: a cancel arrived while it was running.
      history: the outcomes of its attempts, in order.
    """

    id: str
    job: Job
    state: str = "queued"
    attempt: int = 0
    need: int | None = None
    alone: bool = False
    memory_scale: float = 1.0
    placement: dict[str, Any] | None = None
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    not_before: float = 0.0
    exit_code: int | None = None
    outcome: str | None = None
    message: str = ""
    cancel_requested: bool = False
    history: list[str] = dataclasses.field(default_factory=list)

    def count(self, outcome: str) -> int:
        """How many attempts ended with ``outcome``."""
        return self.history.count(outcome)


def apply(records: dict[str, JobRecord], event: dict[str, Any]) -> None:
    """Applies one journal event to the records (in place)."""
    kind, t = event["event"], event.get("t", 0.0)
    if kind == "submit":
        job = Job.from_dict(event["job"])
        records[event["id"]] = JobRecord(event["id"], job, need=job.memory_bytes, submitted=t)
        return
    record = records.get(event.get("id", ""))
    if record is None:
        return  # an event about a job this journal never had: ignored
    if kind == "measured":
        record.need = int(event["memory_bytes"])
    elif kind == "start":
        record.state, record.attempt = "running", int(event["attempt"])
        record.placement, record.started, record.ended = event["placement"], t, None
    elif kind == "exit":
        record.exit_code, record.outcome = event.get("code"), event["outcome"]
        record.message, record.ended = event.get("message", ""), t
        if event.get("attempt"):
            record.history.append(event["outcome"])
        retry = event.get("retry")
        if retry is None:
            record.state = event.get("state", "failed")
        else:
            record.state = "queued"
            record.alone = bool(retry.get("alone", record.alone))
            record.memory_scale = float(retry.get("memory_scale", record.memory_scale))
            record.not_before = t + float(retry.get("delay", 0.0))
    elif kind == "cancel":
        if record.state == "queued":
            record.state, record.outcome, record.ended = "cancelled", "cancelled", t
            record.message = "cancelled before it ran" if not record.attempt else "cancelled"
        elif record.state == "running":
            record.cancel_requested = True


def replay(events: list[dict[str, Any]]) -> dict[str, JobRecord]:
    """The records the events describe, by id in submission order.

    Example:
      >>> events = [
      ...     {"event": "submit", "id": "1", "job": {"command": ["true"]}},
      ...     {"event": "start", "id": "1", "attempt": 1, "placement": {"devices": ["cpu"]}},
      ...     {"event": "exit", "id": "1", "attempt": 1, "code": 143, "outcome": "preempted",
      ...      "retry": {}},
      ... ]
      >>> record = replay(events)["1"]
      >>> record.state, record.attempt, record.history
      ('queued', 1, ['preempted'])
    """
    records: dict[str, JobRecord] = {}
    for event in events:
        apply(records, event)
    return records


class Journal:
    """The queue folder's ``journal.jsonl``: events appended whole and fsynced, read back in order.

    Args:
      folder: the queue folder (created on the first append).

    Example:
      >>> import tempfile
      >>> journal = Journal(tempfile.mkdtemp())
      >>> journal.submit(Job(command=("true",)))
      '1'
      >>> [e["event"] for e in journal.read()]
      ['submit']
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).absolute()
        self.path = self.folder / JOURNAL
        self._offset = 0  # where read_new goes on from

    def read(self) -> list[dict[str, Any]]:
        """Every event, in order (a half-written last line, left by a crash, is skipped)."""
        self._offset = 0
        return self.read_new()

    def read_new(self) -> list[dict[str, Any]]:
        """The events appended since the last read or append by this object."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        events, consumed = _parse(data, self.path, self._offset)
        self._offset += consumed
        return events

    def append(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Appends one event; returns the events others appended before it, then it.

        The caller applies the returned events in order, so its state follows the journal's
        order exactly.
        """
        event = {"t": time.time(), **event}
        with self._locked() as fd:
            before = self.read_new()
            _write_line(fd, event)
            self._offset = os.fstat(fd).st_size
        return [*before, event]

    def submit(self, job: Job) -> str:
        """Adds a job to the queue; returns its id (the next number)."""
        if job.command is None and job.workdir is not None:
            job = dataclasses.replace(job, workdir=os.path.abspath(job.workdir))
        if job.cwd is None:
            job = dataclasses.replace(job, cwd=os.getcwd())
        with self._locked() as fd:
            records = replay(self.read())
            if job.workdir is not None:
                for other in records.values():
                    if other.state in ACTIVE and other.job.workdir == job.workdir:
                        raise JobError(
                            f"job.workdir: {job.workdir} is already the workdir of job "
                            f"{other.id} ({other.state}); give this job another one"
                        )
            job_id = str(1 + max((int(i) for i in records if i.isdigit()), default=0))
            _write_line(
                fd, {"t": time.time(), "event": "submit", "id": job_id, "job": job.to_dict()}
            )
            self._offset = os.fstat(fd).st_size
        return job_id

    def records(self) -> dict[str, JobRecord]:
        """The jobs' records replayed from the whole journal."""
        return replay(Journal(self.folder).read())

    def _locked(self):
        return _Locked(self.path)


class _Locked:
    """The journal file opened for appending, under an exclusive flock."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise JobError(f"cannot write the job queue's journal {self.path}: {e}") from e
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _write_line(fd: int, event: dict[str, Any]) -> None:
    """One whole line in one write, on disk before returning; a torn last line is repaired."""
    size = os.fstat(fd).st_size
    prefix = b""
    if size and os.pread(fd, 1, size - 1) != b"\n":
        prefix = b"\n"  # a crash cut the last line short: end it, replay skips it
    os.write(fd, prefix + json.dumps(event, separators=(",", ":")).encode() + b"\n")
    os.fsync(fd)


def _parse(data: bytes, path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of ``data`` as events, and how many bytes they took."""
    events: list[dict[str, Any]] = []
    end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
    for number, line in enumerate(data[:end].splitlines()):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            print(
                f"warning: {path}: skipping unreadable line {number + 1} after byte {offset}: "
                f"{line[:80]!r}",
                file=sys.stderr,
            )
            continue
        events.append(event)
    return events, end


def iter_active(records: dict[str, JobRecord]) -> Iterator[JobRecord]:
    """The queued and running records, in submission order."""
    return (r for r in records.values() if r.state in ACTIVE)
