"""A bounded soak test: smoke training runs under random faults, each checked against an
uninterrupted run.

Two uninterrupted runs come first (the first fills the XLA compilation cache the others share;
both must end alike); the final state of the last checkpoint (every array: parameters,
optimizer state, step, rng, carry) and the final metrics are kept in memory. Each trial then
trains the same config in a fresh workdir under a random plan of faults, restarting the same
command until it exits 0 (at most ``--attempts`` processes), and compares the final checkpoint
bit for bit (``np.array_equal``, dtype and shape of every leaf) and the final metrics with the
reference. Trial ``i`` features fault kind ``i % 5``, so any five trials in a row cover all:

- ``sigkill`` / ``sigterm``: the signal at a random moment: after the process started, after
  its first training step, while a checkpoint is being written (an ``.orbax-checkpoint-tmp``
  folder exists) or just after a new one appeared. Once SIGKILLed, ``status.json`` must not
  pass for a live run (:func:`jaxlm.monitor.run_state` says ``"crashed"``); SIGTERMed, it must
  exit 143 with one line on stderr naming the step, ``status.json`` "preempted" at that step
  and a checkpoint of it that verifies. (A SIGTERM in the first ~0.1 s, before Python runs
  jaxlm's handler, kills with -15: accepted when sent in the first 0.5 s and the process wrote
  no status.)
- ``corrupt byte``: between two processes, one byte of a random file of a random checkpoint
  (mostly the newest; mostly the ocdbt data files under ``state/``, also its metadata files and
  the ``meta`` JSON) is XORed with a random value. The harness reads that checkpoint back as
  the library does (:func:`jaxlm.checkpoints.load_state`, checksums and meta digest checked):
  a refusal is ``caught``, and no later process may resume from it until one saved that step
  again; a byte after which the very same arrays and meta read back is ``harmless`` (padding,
  an unused field); other values read back without an error are a mismatch. When every
  checkpoint is damaged the run must refuse (rc 2: ``error: no intact checkpoint ...; tried:``
  and one indented line per checkpoint, status "failed"); the harness then moves them aside
  as an operator would, and the next process starts afresh.
- ``second writer``: once a process holds the workdir's lock it is frozen (SIGSTOP: the
  overlap is certain) and the same command is started on the same workdir: it must exit 2
  within ``SECOND_WRITER_TIMEOUT_S`` with one line naming the holder's pid and host, and change
  no file or folder of the workdir; then the first goes on (SIGCONT) and must finish alike.
- ``tiny fs``: the workdir is on a tmpfs mount sized for 1.3-2.7 checkpoints (as root where
  ``mount`` works; elsewhere skipped with a message). The run must stop with rc 2 and one line
  naming the lack of space, ``status.json`` "failed", the newest checkpoint left must be the
  one the line calls intact and every one left must verify. The mount is then made bigger
  and the run must resume and finish alike.

After any death ``status.json`` must not claim a live run. Counts: a fault is counted when it
was delivered (a signal that ended a live process, a byte changed, a second writer started, a
full disk hit). A recovery is a trial with at least one fault that finished bit-identical. A
clean error is an expected rc-2 error (full disk, no intact checkpoint) with every checkpoint
left intact or set aside. Steps redone (lost work): for every process, the steps it trained
again that an earlier process of the same trial had logged, ``max(0, min(reached, furthest) -
resumed_from)``: ``resumed_from`` from its "Resumed from" line (0 for a fresh start),
``reached`` its last logged train step, ``furthest`` the last step any earlier process of the
trial logged (``log_every=1``: a logged step is at most one behind the step reached); it is
charged to the fault that ended the last process that trained, or to damage caught since (a
SIGTERM saves the step reached, so it should cost nothing). An unexpected outcome
is anything else: a traceback on stderr, another exit status, a message or status that does
not say what happened, a hang. Exit status 1 if there is any mismatch or unexpected outcome.

Usage:
  python benchmarks/chaos.py                           # the default bound: about 12 minutes
  python benchmarks/chaos.py --quick                   # about 2 minutes, every fault kind
  python benchmarks/chaos.py --runs 30 --minutes 20 --seed 7 --keep --verbose
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxlm import checkpoints as ck  # noqa: E402
from jaxlm import monitor  # noqa: E402
from jaxlm.tree import flatten  # noqa: E402

KINDS = ("sigkill", "sigterm", "corrupt byte", "second writer", "tiny fs")
SECOND_WRITER_TIMEOUT_S = 60.0
PROCESS_TIMEOUT_S = 300.0
POLL_S = 0.005
EARLY_SIGTERM_S = 0.5  # before this, a SIGTERM may land before jaxlm's handler exists
TMP_MARK = ".orbax-checkpoint-tmp"
BIG_FS = 32 << 20  # a tiny fs is remounted this big after its full-disk stop


# --------------------------------------------------------------------------------------------
# Settings and results.


@dataclasses.dataclass(frozen=True)
class Settings:
    """The training run every process repeats."""

    steps: int = 120
    every: int = 20
    keep: int = 2

    def command(self, workdir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jaxlm.train",
            "--config=configs/lstm.py:smoke",
            f"--workdir={workdir}",
            f"--config.train.num_steps={self.steps}",
            f"--config.train.checkpoint_every={self.every}",
            f"--config.train.keep_checkpoints={self.keep}",
            "--config.train.log_every=1",
        ]


@dataclasses.dataclass
class Tally:
    """What the trials found."""

    trials: int = 0
    processes: int = 0
    second_writers: int = 0
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    corrupt_caught: int = 0
    corrupt_harmless: int = 0
    set_aside: int = 0
    second_refused: int = 0
    second_slowest: float = 0.0
    faulted_trials: int = 0
    finished: int = 0
    recoveries: int = 0
    clean_errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    redone: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    mismatches: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Reference:
    """The uninterrupted run: its final state and metrics, its timings (seconds from the start)
    and sizes (in tmpfs pages)."""

    state: dict[str, Any]
    final: dict[str, Any]
    total_s: float
    train_s: float  # from the first train line to the exit
    checkpoint_bytes: int
    base_bytes: int  # the rest of a finished workdir


# --------------------------------------------------------------------------------------------
# One training process, watched.


class Proc:
    """A training process whose stdout and stderr go to files (an unread pipe could stall it);
    its stdout is read as it comes for the steps it logs."""

    def __init__(self, cmd: list[str], log_stem: Path, env: dict[str, str]):
        self.out_path = log_stem.with_suffix(".out")
        self.err_path = log_stem.with_suffix(".err")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=env)
        self.t0 = time.monotonic()
        self.pid = self.popen.pid
        self._reader = open(self.out_path)  # noqa: SIM115 (closed by close())
        self._buffer = ""
        self.trained = False  # it logged a train step
        self.last_step = 0  # the last train step it logged
        self.resumed_from: int | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> int | None:
        self.read()
        return self.popen.poll()

    def read(self) -> None:
        """Takes in the stdout lines written so far: train steps and the "Resumed from" line."""
        self._buffer += self._reader.read()
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if m := re.match(r"\[train\] step (\d+)/", line):
                self.trained, self.last_step = True, int(m.group(1))
            elif m := re.match(r"Resumed from .*/(\d+)$", line):
                self.resumed_from = int(m.group(1))

    def signal(self, signum: int) -> bool:
        """Sends ``signum`` if the process still runs; whether it was sent."""
        if self.popen.poll() is not None:
            return False
        os.kill(self.pid, signum)
        return True

    def wait(self, timeout: float) -> tuple[int, bool]:
        """The exit status, and whether it had to be SIGKILLed after ``timeout`` seconds."""
        try:
            self.popen.wait(timeout)
            hung = False
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            hung = True
        self.read()
        return self.popen.returncode, hung

    def stderr(self) -> str:
        return self.err_path.read_text()

    def close(self) -> None:
        if self.popen.poll() is None:  # the harness is leaving early
            self.popen.kill()
            self.popen.wait()
        self._reader.close()


@dataclasses.dataclass
class Kill:
    """A signal to send ``delay`` seconds after ``anchor`` (start, training, saving, saved)."""

    signum: int
    anchor: str
    delay: float

    @property
    def kind(self) -> str:
        return "sigkill" if self.signum == signal.SIGKILL else "sigterm"


@dataclasses.dataclass
class Ended:
    """How a process ended."""

    proc: Proc
    rc: int
    killed: Kill | None  # the signal sent, if one was
    sent_at: float | None
    hung: bool = False


def _checkpoint_names(workdir: Path) -> list[str]:
    try:
        return os.listdir(ck.checkpoint_dir(workdir))
    except FileNotFoundError:
        return []


class Watch:
    """When the moments the planned events are timed from came, for one process."""

    def __init__(self, proc: Proc, workdir: Path):
        self.proc, self.workdir = proc, workdir
        self.before = {n for n in _checkpoint_names(workdir) if n.isdigit()}
        self.marks: dict[str, float] = {"start": 0.0}

    def update(self) -> None:
        now = self.proc.elapsed()
        if "training" not in self.marks and self.proc.trained:
            self.marks["training"] = now
        names = _checkpoint_names(self.workdir)
        if "saving" not in self.marks and any(TMP_MARK in n for n in names):
            self.marks["saving"] = now
        if "saved" not in self.marks and any(n.isdigit() and n not in self.before for n in names):
            self.marks["saved"] = now
        if (
            "locked" not in self.marks
            and (ck.holder(self.workdir) or {}).get("pid") == self.proc.pid
        ):
            self.marks["locked"] = now

    def due(self, anchor: str, delay: float) -> bool:
        mark = self.marks.get(anchor)
        return mark is not None and self.proc.elapsed() >= mark + delay


def supervise(
    proc: Proc,
    workdir: Path,
    kill: Kill | None,
    second_writer: float | None,
    start_second: Callable[[Proc], None],
) -> Ended:
    """Watches a process until it exits, sending its planned signal and starting the second
    writer (``second_writer`` seconds after it took the lock) when they are due."""
    watch = Watch(proc, workdir)
    sent, sent_at = None, None
    while proc.poll() is None and proc.elapsed() < PROCESS_TIMEOUT_S:
        watch.update()
        if second_writer is not None and watch.due("locked", second_writer):
            start_second(proc)
            second_writer = None
        elif kill is not None and sent is None and watch.due(kill.anchor, kill.delay):
            t = proc.elapsed()
            if proc.signal(kill.signum):
                sent, sent_at = kill, t
        time.sleep(POLL_S)
    rc, hung = proc.wait(0 if proc.elapsed() >= PROCESS_TIMEOUT_S else PROCESS_TIMEOUT_S)
    return Ended(proc, rc, sent, sent_at, hung)


# --------------------------------------------------------------------------------------------
# Workdir helpers.


def _snapshot(workdir: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder of a workdir with its type, size and modification time."""
    entries = {}
    for path in workdir.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        entries[str(path.relative_to(workdir))] = (stat.S_IFMT(st.st_mode), size, st.st_mtime_ns)
    return entries


def _pages(folder: Path) -> int:
    """Bytes the files under ``folder`` take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def load_final(workdir: Path, step: int) -> dict[str, Any]:
    return ck.load_state(workdir, step)[0]


def compare(state: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The leaves of ``state`` that differ from ``reference`` in path, dtype, shape or any bit."""
    got, want = flatten(state), flatten(reference)
    problems = [f"{k}: missing" for k in sorted(set(want) - set(got))]
    problems += [f"{k}: not in the reference" for k in sorted(set(got) - set(want))]
    for key in sorted(set(got) & set(want)):
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
        elif not np.array_equal(a, b) or a.tobytes() != b.tobytes():
            problems.append(f"{key}: values differ")
    return problems


def _status(workdir: Path) -> dict | None:
    return monitor.read_status(workdir, log=lambda _: None)


def _state(status: dict | None) -> str | None:
    return None if status is None else status["state"]


def _one_line(stderr: str) -> str | None:
    """The stderr text if it is one non-empty line, else None."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else None


def _reads_back(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A checkpoint's whole state and meta as the library reads them; None if it refuses."""
    try:
        return ck.load_state(folder)
    except ck.CheckpointError:
        return None


def _corruption_targets(folder: Path) -> Iterator[tuple[float, Path]]:
    """The files of a checkpoint to damage, with weights: mostly array data."""
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size and path.name != "commit_success.txt":
            parts = path.relative_to(folder).parts
            yield (7.0 if parts[0] == "state" and "d" in parts[:-1] else 1.0), path


class TinyFs:
    """A tmpfs mount for one trial's workdir."""

    def __init__(self, mount: Path, size: int):
        self.mount = mount
        mount.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount))

    def grow(self, size: int) -> None:
        _mount("-o", f"remount,size={size}", str(self.mount))

    def close(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def tmpfs_unavailable(base: Path) -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("mount") is None:
        return "no mount command"
    try:
        TinyFs(base / "probe", 1 << 20).close()
    except (subprocess.CalledProcessError, OSError) as e:
        return f"mount failed: {(getattr(e, 'stderr', '') or str(e)).strip()}"
    return None


# --------------------------------------------------------------------------------------------
# Plans.


@dataclasses.dataclass
class Plan:
    """The faults of one trial."""

    kills: list[Kill]  # the signal for process i, for the first len(kills) processes
    corrupt_after: set[int]  # processes after whose end a byte is corrupted
    second_writer_in: int | None  # the process a second writer is started against
    second_writer_at: float  # seconds after that process took the lock
    tiny_size: int | None  # bytes of the tmpfs the workdir is on, if any

    def describe(self) -> str:
        parts = [f"{k.kind}@{k.anchor}+{k.delay:.2f}s" for k in self.kills]
        if self.corrupt_after:
            parts.append(f"corrupt after {sorted(self.corrupt_after)}")
        if self.second_writer_in is not None:
            parts.append(f"second writer in {self.second_writer_in}")
        if self.tiny_size:
            parts.append(f"tmpfs {self.tiny_size // 1024} KiB")
        return ", ".join(parts) or "no fault"


def random_kill(
    rng: random.Random, ref: Reference, signum: int | None = None, *, in_training: bool = False
) -> Kill:
    """A signal at a random moment; ``in_training``: one that lands before the run ends."""
    signum = signum or rng.choice([signal.SIGKILL, signal.SIGTERM])
    anchors = {"start": 3, "training": 3, "saving": 2, "saved": 2}
    if in_training:
        del anchors["start"]
    anchor = rng.choices(list(anchors), weights=list(anchors.values()))[0]
    delay = {
        "start": lambda: rng.uniform(0.05, ref.total_s),
        "training": lambda: rng.uniform(0.0, ref.train_s * (0.4 if in_training else 1.0)),
        "saving": lambda: rng.uniform(0.0, 0.2),  # a save takes about 0.2 s
        "saved": lambda: rng.uniform(0.0, 0.5),
    }[anchor]()
    return Kill(signum, anchor, delay)


def make_plan(index: int, rng: random.Random, ref: Reference, tiny_ok: bool) -> Plan:
    """A random plan featuring fault kind ``index % 5`` (``% 4`` without a tiny fs)."""
    kinds = [k for k in KINDS if tiny_ok or k != "tiny fs"]
    featured = kinds[index % len(kinds)]
    kills = [random_kill(rng, ref) for _ in range(rng.randint(0, 2))]
    if featured in ("sigkill", "sigterm"):
        signum = signal.SIGKILL if featured == "sigkill" else signal.SIGTERM
        kills.insert(0, random_kill(rng, ref, signum, in_training=True))
    corrupt_after = {i for i in range(len(kills)) if rng.random() < 0.25}
    if featured == "corrupt byte":  # a kill once a checkpoint exists, then the damage
        kills.insert(0, Kill(rng.choice([signal.SIGKILL, signal.SIGTERM]), "saved", 0.3))
        corrupt_after = {0} | {i + 1 for i in corrupt_after}
    second_in = None
    if featured == "second writer" or rng.random() < 0.15:
        second_in = rng.randint(0, len(kills))
    tiny = None
    if tiny_ok and (featured == "tiny fs" or rng.random() < 0.1):
        tiny = ref.base_bytes + int(ref.checkpoint_bytes * rng.uniform(1.3, 2.7))
    return Plan(kills, corrupt_after, second_in, rng.uniform(0.0, 2.0), tiny)


# --------------------------------------------------------------------------------------------
# A trial: its processes and the checks after each.


@dataclasses.dataclass
class Context:
    base: Path
    settings: Settings
    env: dict[str, str]
    max_attempts: int
    reference: Reference | None = None
    tally: Tally = dataclasses.field(default_factory=Tally)


@dataclasses.dataclass
class Corruption:
    step: int
    file: str
    offset: int
    caught: bool


class Trial:
    """One workdir trained to the end under a plan of faults."""

    def __init__(self, index: int, ctx: Context, rng: random.Random):
        self.index, self.ctx, self.rng = index, ctx, rng
        self.tally = ctx.tally
        self.folder = ctx.base / f"trial{index:03d}"
        self.folder.mkdir()
        self.workdir = self.folder / "run"
        self.tiny: TinyFs | None = None
        self.furthest = 0  # the last step any process of this trial logged
        self.cause = ""  # what lost the steps not saved: lost work is charged to it
        self.caught: list[Corruption] = []  # damage caught that no process may resume from
        self.faults: list[str] = []
        self.notes: list[str] = []
        self.problems = 0

    # -- reporting --

    def fault(self, kind: str, *, charged: bool) -> None:
        """Counts a fault; a ``charged`` one (it ended a process that trained, or damaged a
        checkpoint) is what the steps redone next are charged to."""
        self.faults.append(kind)
        self.tally.faults[kind] += 1
        if charged:
            self.cause = kind

    def unexpected(self, what: str, proc: Proc | None = None) -> None:
        where = f"trial {self.index}"
        if proc is not None:
            where += f", pid {proc.pid} (logs {proc.out_path.with_suffix('.*')})"
        self.tally.unexpected.append(f"{where}: {what}")
        self.problems += 1

    def mismatch(self, what: str) -> None:
        faults = ", ".join(self.faults) or "no fault"
        self.tally.mismatches.append(f"trial {self.index} ({faults}; {self.folder}): {what}")
        self.problems += 1

    # -- the run --

    def run(self, plan: Plan) -> None:
        if plan.tiny_size:
            self.tiny = TinyFs(self.folder / "tiny", plan.tiny_size)
            self.workdir = self.tiny.mount / "run"
        try:
            self._run(plan)
        finally:
            if self.tiny is not None:
                self.tiny.close()
        if self.faults:
            self.tally.faulted_trials += 1

    def _run(self, plan: Plan) -> None:
        for attempt in range(self.ctx.max_attempts):
            proc = self.start()
            try:
                kill = plan.kills[attempt] if attempt < len(plan.kills) else None
                second = plan.second_writer_at if attempt == plan.second_writer_in else None
                ended = supervise(proc, self.workdir, kill, second, self.start_second)
            finally:
                proc.close()
            self.check_traceback(ended)
            self.check_resume_source(proc)
            self.account(proc)
            self.notes.append(_describe(ended))
            if ended.rc == 0:
                self.check_finished(ended)
                break
            self.after_death(ended)
            if ended.hung:
                return
            if attempt in plan.corrupt_after and _state(_status(self.workdir)) != "finished":
                self.corrupt()  # (a finished run is not looked at again: not the point)
        else:
            self.unexpected(f"not finished after {self.ctx.max_attempts} processes")
        self.tally.set_aside += sum(".damaged" in n for n in _checkpoint_names(self.workdir))

    def start(self) -> Proc:
        n = self.tally.processes
        self.tally.processes += 1
        cmd = self.ctx.settings.command(self.workdir)
        return Proc(cmd, self.folder / f"p{n:04d}", self.ctx.env)

    def start_second(self, first: Proc) -> None:
        """Freezes ``first``, starts the same command on its workdir, checks the refusal."""
        os.kill(first.pid, signal.SIGSTOP)
        if first.popen.poll() is not None:  # it exited just before: nothing to overlap with
            return
        try:
            before = _snapshot(self.workdir)
            second = self.start()
            self.tally.second_writers += 1
            rc, hung = second.wait(SECOND_WRITER_TIMEOUT_S)
            took = second.elapsed()
            after = _snapshot(self.workdir)
            second.close()
        finally:
            os.kill(first.pid, signal.SIGCONT)
        self.faults.append("second writer")
        self.tally.faults["second writer"] += 1
        line = _one_line(second.stderr()) or ""
        holder = f"is being written by pid {first.pid} on host {socket.gethostname()}"
        if hung:
            self.unexpected(f"second writer: no exit in {SECOND_WRITER_TIMEOUT_S:.0f} s", second)
        elif rc != 2 or not line.startswith("error: ") or holder not in line:
            self.unexpected(f"second writer: rc {rc}, stderr {second.stderr()!r}", second)
        else:
            self.tally.second_refused += 1
            self.tally.second_slowest = max(self.tally.second_slowest, took)
        if before != after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            self.unexpected(f"the refused second writer changed {changed[:10]}", second)

    def corrupt(self) -> None:
        """Changes one byte of a random checkpoint file and reads the checkpoint back."""
        steps = ck.list_steps(self.workdir)
        if not steps:
            return
        step = steps[-1] if self.rng.random() < 0.7 else self.rng.choice(steps)
        folder = ck.checkpoint_dir(self.workdir) / str(step)
        before = _reads_back(folder)
        weights, paths = zip(*_corruption_targets(folder), strict=True)
        path = self.rng.choices(paths, weights=weights)[0]
        data = bytearray(path.read_bytes())
        offset = self.rng.randrange(len(data))
        data[offset] ^= self.rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        after = _reads_back(folder)
        c = Corruption(step, str(path.relative_to(folder.parent)), offset, after is None)
        self.fault("corrupt byte", charged=c.caught)
        self.notes.append(f"  byte {offset} of {c.file}: {'caught' if c.caught else 'read back'}")
        if before is None:
            self.unexpected(f"{folder} did not read back before it was corrupted")
        elif c.caught:
            self.tally.corrupt_caught += 1
            self.caught.append(c)
        elif diffs := compare(after[0], before[0]) + (["meta"] if after[1] != before[1] else []):
            self.mismatch(f"byte {offset} of {c.file} changed, read back without an error: {diffs}")
        else:
            self.tally.corrupt_harmless += 1

    # -- checks --

    def check_traceback(self, ended: Ended) -> None:
        err = ended.proc.stderr()
        if "Traceback" in err:
            tail = "\n      ".join(err.strip().splitlines()[-6:])
            self.unexpected(f"traceback on stderr (rc {ended.rc}):\n      {tail}", ended.proc)

    def check_resume_source(self, proc: Proc) -> None:
        """No process resumes from a checkpoint whose damage was caught; one that trained past
        that step saved a good one in its place."""
        for c in self.caught:
            if proc.resumed_from == c.step:
                self.unexpected(f"resumed from damaged checkpoint {c.step} ({c.file})", proc)
        if proc.trained:
            start = proc.resumed_from or 0
            self.caught = [c for c in self.caught if not start < c.step <= proc.last_step]

    def account(self, proc: Proc) -> None:
        """The steps this process redid (see the module docstring)."""
        if not proc.trained:
            return
        redone = max(0, min(proc.last_step, self.furthest) - (proc.resumed_from or 0))
        if redone:
            self.tally.redone[self.cause or "?"] += redone
        self.furthest = max(self.furthest, proc.last_step)

    def check_finished(self, ended: Ended) -> None:
        """Compares a finished run with the reference."""
        self.tally.finished += 1
        if ended.killed is not None:
            self.notes.append(f"  {ended.killed.kind} sent as it ended: rc 0")
        status = _status(self.workdir)
        if _state(status) != "finished":
            self.unexpected(f"rc 0 but status.json says {_state(status)}", ended.proc)
            return
        try:
            state = load_final(self.workdir, self.ctx.settings.steps)
        except ck.CheckpointError as e:
            self.unexpected(f"rc 0 but the final checkpoint does not read back: {e}", ended.proc)
            return
        ref = self.ctx.reference
        diffs = compare(state, ref.state)
        if status.get("final") != ref.final:
            diffs.append(f"final metrics {status.get('final')} vs {ref.final}")
        if diffs:
            self.mismatch("; ".join(diffs[:5]))
        elif self.faults:
            self.tally.recoveries += 1

    def after_death(self, ended: Ended) -> None:
        """The checks after a process that did not finish, and what follows it."""
        proc, rc, kill = ended.proc, ended.rc, ended.killed
        signum = kill.signum if kill is not None else None
        if ended.hung:
            self.unexpected(f"no exit in {PROCESS_TIMEOUT_S:.0f} s", proc)
        elif signum == signal.SIGKILL and rc == -signal.SIGKILL:
            self.fault("sigkill", charged=proc.trained)
        elif signum == signal.SIGTERM and rc == 128 + signal.SIGTERM:
            self.fault("sigterm", charged=proc.trained)
            self.check_preempted(proc)
        elif signum == signal.SIGTERM and rc == -signal.SIGTERM:
            mine = (_status(self.workdir) or {}).get("pid") == proc.pid
            if ended.sent_at < EARLY_SIGTERM_S and not mine:
                self.fault("sigterm", charged=proc.trained)
                self.notes.append(f"  SIGTERM at {ended.sent_at:.2f} s: before jaxlm's handler")
            else:
                self.unexpected(f"SIGTERM at {ended.sent_at:.2f} s killed it (rc -15)", proc)
        elif rc == 2 and self.tiny is not None and self.check_full_disk(proc):
            self.tiny.grow(BIG_FS)
        elif rc == 2 and self.check_no_intact(proc):
            pass
        else:
            why = f"{kill.kind} at {ended.sent_at:.2f} s" if kill else "no signal sent"
            self.unexpected(f"rc {rc} ({why}); stderr: {proc.stderr().strip()[-400:]!r}", proc)
        status = _status(self.workdir)
        if monitor.run_state(status) in monitor.ACTIVE_STATES:
            self.unexpected(f"dead (rc {rc}), yet status.json passes for live: {status}", proc)

    def check_preempted(self, proc: Proc) -> None:
        """Exit 143: one line naming the step, status "preempted" there, its checkpoint good."""
        status, line = _status(self.workdir), _one_line(proc.stderr())
        m = re.search(r"at step (\d+)", line or "")
        if m is None:
            self.unexpected(f"rc 143 without one line naming the step: {proc.stderr()!r}", proc)
            return
        step = int(m.group(1))
        if _state(status) != "preempted" or (status or {}).get("step") != step:
            self.unexpected(f"{line!r}, status.json {_state(status)} at {status}", proc)
        if step and step not in ck.list_steps(self.workdir):
            self.unexpected(f"{line!r}, no checkpoint {step}", proc)
        elif step and _reads_back(ck.checkpoint_dir(self.workdir) / str(step)) is None:
            self.unexpected(f"{line!r}, checkpoint {step} does not read back", proc)

    def check_full_disk(self, proc: Proc) -> bool:
        """A full-disk stop and what it must leave; whether it was one."""
        line = _one_line(proc.stderr())
        if line is None or "no space left on device" not in line:
            return False
        self.fault("tiny fs", charged=proc.trained)
        self.tally.clean_errors["full disk"] += 1
        status = _status(self.workdir)
        if _state(status) != "failed" or status.get("pid") != proc.pid:
            self.unexpected(f"full disk, status.json {_state(status)} instead of failed", proc)
        steps = ck.list_steps(self.workdir)
        m = re.search(r"checkpoint (\d+) is intact", line)
        if steps and (m is None or int(m.group(1)) != steps[-1]):
            self.unexpected(f"{line!r}, but the newest checkpoint is {steps[-1]}", proc)
        if not steps and "no checkpoint was saved" not in line:
            self.unexpected(f"{line!r}, but there is no checkpoint", proc)
        bad = [v.line() for v in (ck.verify_run(self.workdir) if steps else []) if v.status != "ok"]
        if bad:
            self.unexpected(f"after a full disk: {bad}", proc)
        return True

    def check_no_intact(self, proc: Proc) -> bool:
        """The refusal when every checkpoint is damaged; whether it was one. The checkpoints
        are then moved aside, as an operator would, so the next process starts afresh."""
        first, *rest = proc.stderr().strip().splitlines() or [""]
        if not first.startswith(("error: no intact checkpoint", "error: no checkpoint has")):
            return False
        self.tally.clean_errors["no intact checkpoint"] += 1
        steps = ck.list_steps(self.workdir)
        if len(rest) != len(steps) or not all(line.startswith("  ") for line in rest):
            self.unexpected(f"every checkpoint damaged, but stderr goes on with {rest!r}", proc)
        status = _status(self.workdir)
        if _state(status) != "failed" or status.get("pid") != proc.pid:
            self.unexpected(f"no intact checkpoint, status.json {status}", proc)
        folder = ck.checkpoint_dir(self.workdir)
        for step in steps:
            (folder / str(step)).rename(folder / f"{step}.moved-by-chaos")
        self.caught = []
        return True


def _describe(ended: Ended) -> str:
    """One line on a process: the signal sent, how it ended, where it resumed, how far it got."""
    p, k = ended.proc, ended.killed
    sent = f"{k.kind}@{k.anchor} at {ended.sent_at:.2f} s" if k else "no signal"
    where = "fresh" if p.resumed_from is None else f"resumed from {p.resumed_from}"
    got = f"trained to {p.last_step}" if p.trained else "trained nothing"
    return f"pid {p.pid}: {sent}, rc {ended.rc}, {where}, {got}"


# --------------------------------------------------------------------------------------------
# The reference, the report and the main loop.


def _uninterrupted(ctx: Context, name: str) -> tuple[Path, float, float]:
    """Trains once without faults: the workdir, the seconds to the exit and to the first step."""
    folder = ctx.base / name
    folder.mkdir()
    workdir = folder / "run"
    proc = Proc(ctx.settings.command(workdir), folder / "p", ctx.env)
    first_train = 0.0
    while proc.poll() is None:
        if not first_train and proc.trained:
            first_train = proc.elapsed()
        time.sleep(POLL_S)
    (rc, _), total = proc.wait(PROCESS_TIMEOUT_S), proc.elapsed()
    proc.close()
    ctx.tally.processes += 1
    if rc != 0 or "Traceback" in proc.stderr():
        sys.exit(f"the {name} run failed (rc {rc}):\n{proc.stderr()[-3000:]}")
    return workdir, total, first_train


def run_reference(ctx: Context) -> Reference:
    """Trains twice without faults (the first fills the compilation cache, the second is timed
    as the trials' processes will run) and checks that both end alike."""
    first, _, _ = _uninterrupted(ctx, "reference")
    workdir, total, first_train = _uninterrupted(ctx, "reference2")
    state = load_final(first, ctx.settings.steps)
    final = (_status(first) or {}).get("final")
    diffs = compare(load_final(workdir, ctx.settings.steps), state)
    if diffs or (_status(workdir) or {}).get("final") != final:
        sys.exit(f"two uninterrupted runs differ, without any fault: {diffs[:5]}")
    ckpts = [ck.checkpoint_dir(workdir) / str(s) for s in ck.list_steps(workdir)]
    return Reference(
        state=state,
        final=final,
        total_s=total,
        train_s=total - first_train,
        checkpoint_bytes=_pages(ckpts[-1]),
        base_bytes=_pages(workdir) - sum(_pages(c) for c in ckpts),
    )


def child_env() -> dict[str, str]:
    """The training processes' environment: an XLA compilation cache they all share (kept
    between invocations), so a start costs seconds, not a compile."""
    env = dict(os.environ)
    cache = Path(tempfile.gettempdir()) / "jaxlm-chaos-xla-cache"
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return env


def report(t: Tally, seconds: float, seed: int, tiny_skip: str | None) -> str:
    """The summary table, then every mismatch and unexpected outcome."""
    f = t.faults
    errors = ", ".join(f"{k} {v}" for k, v in sorted(t.clean_errors.items())) or "none"
    redone = ", ".join(f"after {k} {v}" for k, v in sorted(t.redone.items()))
    rows = [
        ("trials (runs)", f"{t.trials} in {monitor.format_duration(seconds)}, seed {seed}"),
        (
            "processes started",
            f"{t.processes} (2 reference runs, {t.second_writers} second writers)",
        ),
        ("faults: sigkill", f"{f['sigkill']}"),
        ("faults: sigterm", f"{f['sigterm']}"),
        (
            "faults: corrupt byte",
            f"{f['corrupt byte']} ({t.corrupt_caught} caught, {t.corrupt_harmless} harmless; "
            f"{t.set_aside} set aside by the runs)",
        ),
        (
            "faults: second writer",
            f"{f['second writer']} ({t.second_refused} refused, slowest in "
            f"{t.second_slowest:.1f} s)",
        ),
        ("faults: tiny fs", f"{f['tiny fs']}" if tiny_skip is None else f"skipped: {tiny_skip}"),
        ("finished", f"{t.finished} of {t.trials} trials"),
        ("recoveries", f"{t.recoveries} of {t.faulted_trials} trials with a fault"),
        ("clean errors", f"{sum(t.clean_errors.values())} ({errors})"),
        ("steps redone", f"{sum(t.redone.values())}" + (f" ({redone})" if redone else "")),
        ("mismatches", f"{len(t.mismatches)}"),
        ("unexpected outcomes", f"{len(t.unexpected)}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["chaos summary", *(f"  {k:<{width}}  {v}" for k, v in rows)]
    for title, items in (("mismatches", t.mismatches), ("unexpected outcomes", t.unexpected)):
        if items:
            lines += [f"{title}:", *(f"  - {item}" for item in items)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100, help="trials at most")
    parser.add_argument("--minutes", type=float, default=12.0, help="no trial starts after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="--runs 8 --minutes 2.5")
    parser.add_argument("--attempts", type=int, default=8, help="processes per trial at most")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="training steps")
    parser.add_argument("--every", type=int, default=Settings.every, help="checkpoint interval")
    parser.add_argument("--keep", action="store_true", help="keep the trial folders and logs")
    parser.add_argument("--verbose", action="store_true", help="print every process of a trial")
    a = parser.parse_args()
    if a.quick:
        a.runs, a.minutes = 8, 2.5
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="jaxlm-chaos-"))
    ctx = Context(base, Settings(a.steps, a.every), child_env(), a.attempts)
    tiny_skip = tmpfs_unavailable(base)
    if tiny_skip:
        print(f"tiny fs faults skipped: {tiny_skip}")
    try:
        ref = ctx.reference = run_reference(ctx)
        print(
            f"reference: {ref.total_s:.1f} s a run ({ref.train_s:.1f} s from the first step), "
            f"checkpoints of {ref.checkpoint_bytes / 1024:.0f} KiB; trials in {base}"
        )
        for i in range(a.runs):
            if time.monotonic() - t0 > a.minutes * 60:
                break
            rng = random.Random(a.seed * 1_000_003 + i)
            plan = make_plan(i, rng, ref, tiny_skip is None)
            trial, t_trial = Trial(i, ctx, rng), time.monotonic()
            trial.run(plan)
            ctx.tally.trials += 1
            verdict = f"{trial.problems} problem(s)" if trial.problems else "ok"
            print(
                f"trial {i:3d} [{time.monotonic() - t_trial:5.1f} s] {plan.describe()}: "
                f"faults {', '.join(trial.faults) or 'none'}: {verdict}",
                flush=True,
            )
            if a.verbose or trial.problems:
                print("    " + "\n    ".join(trial.notes))
    except KeyboardInterrupt:  # the trial under way is left out; its process was killed
        interrupted = True
        print("interrupted: the counts of the trials done")
    else:
        interrupted = False
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(report(ctx.tally, time.monotonic() - t0, a.seed, tiny_skip))
    if a.keep:
        print(f"trial folders and logs: {base}")
    if interrupted:
        sys.exit(130)
    sys.exit(1 if ctx.tally.mismatches or ctx.tally.unexpected else 0)


if __name__ == "__main__":
    main()
