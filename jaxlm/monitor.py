"""Metric writers (console, JSONL, TensorBoard), run status and progress; process 0 writes.

``status.json`` says what a run is doing: ``starting``, ``running``, ``evaluating``
(``stalled`` while no step finishes, :mod:`jaxlm.train.health`), then ``finished``,
``stopped``, ``preempted`` (SIGTERM), ``interrupted`` (Ctrl-C) or ``failed`` (with the error).
Health events (:meth:`Monitor.event`) are rows of ``metrics.jsonl`` with split ``event`` and a
list ``events`` in ``status.json``. While a run is alive a heartbeat thread rewrites the status
every few seconds (time, pid, host), so a run killed without a word (SIGKILL, power loss) is
told from a live one by :func:`run_state`: its state says "running" but its heartbeat stopped
("crashed"); and one that lives but makes no progress (``step_time``, when its step last moved,
too old) is "stalled".
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlm.errors import WriteError

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
HEARTBEAT_SECONDS = 10.0
ACTIVE_STATES = ("starting", "running", "evaluating", "building", "stalled")
EVENT_SPLIT = "event"  # metrics.jsonl rows of health events: {"step", "split": "event", "event"}
MAX_STATUS_EVENTS = 100  # status.json keeps the newest this many events


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 of a run of several.

    JAX is not imported here (reading a status, ``python -m jaxlm.runs``, or an n-gram run needs
    none): a process that has not imported it has not joined a run of several, so it is the
    only one.

    Example:
      >>> is_writer()
      True
    """
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=float))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Monitor:
    """Writes metrics to the console, ``metrics.jsonl``, TensorBoard and ``status.json``.

    Args:
      workdir: the run folder.
      total_steps: the run's last step, for progress and ETA.
      tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.
      heartbeat: rewrite ``status.json`` every this many seconds while open (None: only when
        something changes).

    Example:
      >>> import tempfile
      >>> mon = Monitor(tempfile.mkdtemp(), total_steps=100, tensorboard=False)
      >>> mon.write(10, {"loss": 2.3}, split="train", eta=65.0)
      [train] step 10/100 | loss 2.3 | ETA 1:05
    """

    def __init__(
        self,
        workdir: str | Path,
        total_steps: int,
        *,
        tensorboard: bool = True,
        heartbeat: float | None = None,
    ):
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.enabled = is_writer()
        self._tb = None
        self._status: dict[str, Any] = {
            "state": "starting",
            "step": 0,
            "total_steps": total_steps,
            "eta_seconds": None,
            "step_time": time.time(),  # when the step last moved: a stall is judged by it
        }
        self._lock = threading.Lock()  # the heartbeat thread writes status.json too
        self._written = False  # until then status.json is the previous run's
        self._stop_beating = threading.Event()
        self._beat: threading.Thread | None = None
        self.alert: Callable[[dict[str, Any]], None] | None = None  # told every event
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            _quiet_board_failures()

            # A deep queue: its writer thread never keeps a step waiting (and see _board).
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), max_queue=1000)
        if heartbeat:
            self._beat = threading.Thread(
                target=self._heartbeat, args=(heartbeat,), name="jaxlm-heartbeat", daemon=True
            )
            self._beat.start()

    @property
    def state(self) -> str:
        """The state last written (``starting`` before any)."""
        return self._status["state"]

    @property
    def step(self) -> int:
        """The step last written."""
        return self._status["step"]

    @property
    def written(self) -> bool:
        """Whether this monitor has written ``status.json`` (before, it is the last run's)."""
        return self._written

    def write(
        self,
        step: int,
        metrics: dict[str, float],
        split: str,
        *,
        echo: bool = True,
        eta: float | None = None,
        status: bool = True,
    ) -> None:
        """Records metrics of one split at a step everywhere, and prints a line.

        Args:
          step: the training step they belong to.
          metrics: name to value.
          split: ``train``, ``eval`` (evaluations during training), ``validation``, ``test``;
            ``diagnostics`` (per-parameter norms), ``checkpoint`` (the seconds a save held
            training up).
          echo: also print the line.
          eta: seconds of training left, shown on train lines and in ``status.json``.
          status: also copy them into ``status.json`` as ``<split>_<name>`` (not the
            per-parameter diagnostics: the status stays small).
        """
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        row = json.dumps({"step": step, "split": split, **metrics, "time": time.time()})
        try:
            with open(self.workdir / METRICS_FILE, "a") as f:
                f.write(row + "\n")
        except OSError as e:
            raise WriteError.of(self.workdir / METRICS_FILE, e) from e
        for key, value in metrics.items():
            if (board := self._board()) is not None:
                board.add_scalar(f"{split}/{key}", value, step)
        if echo:
            print(self.format_line(step, metrics, split, eta), flush=True)
        if status:
            state = "running" if split in ("train", "eval") else self.state
            self.status(state, step, eta=eta, **{f"{split}_{k}": v for k, v in metrics.items()})

    def histograms(self, step: int, arrays: dict[str, Any], prefix: str = "params") -> None:
        """Writes a TensorBoard histogram of each array (``<prefix>/<name>``); nothing without
        TensorBoard.

        Args:
          step: the training step.
          arrays: numpy arrays by name (:func:`jaxlm.train.hooks.host_arrays`).
          prefix: the tags' group.
        """
        for name, values in arrays.items():
            if (board := self._board()) is not None:
                board.add_histogram(f"{prefix}/{name}", values.astype("float32"), step)

    def _board(self) -> Any:
        """The TensorBoard writer while its thread lives, else None (said once).

        tensorboardX writes from a thread that dies on its first failed write (a full disk)
        and then leaves every later event waiting forever on a full queue: the run would hang
        where it should go on to its own error. So once the thread is gone the run stops
        writing TensorBoard events; ``metrics.jsonl`` holds them all.
        """
        if self._tb is None:
            return None
        worker = getattr(getattr(self._tb.file_writer, "event_writer", None), "_worker", None)
        if worker is None or worker.is_alive():
            return self._tb
        self._tb = None
        print(
            f"TensorBoard events in {self.workdir / 'tensorboard'} stopped: its writer failed "
            "(a full disk?); metrics.jsonl has every metric",
            flush=True,
        )
        return None

    def event(self, step: int, name: str, message: str, **fields: Any) -> dict[str, Any]:
        """Records a health event: a ``metrics.jsonl`` row ``{"step", "split": "event",
        "event", "message", ...}``, an entry of ``status.json``'s ``events``, one printed line,
        and the alert (:mod:`jaxlm.alerts`) when one is set; process 0 writes and alerts. Safe
        from another thread.

        Args:
          step: the step it belongs to.
          name: the event (``loss_spike``, ``stall``, ``failure``...).
          message: one line for people.
          **fields: more JSON values for the row.

        Returns:
          The row.

        Example:
          >>> import tempfile
          >>> mon = Monitor(tempfile.mkdtemp(), total_steps=100, tensorboard=False)
          >>> _ = mon.event(12, "loss_spike", "loss 310 above 3 x its average")
          [event] step 12: loss_spike: loss 310 above 3 x its average
          >>> read_status(mon.workdir)["events"][0]["event"]
          'loss_spike'
        """
        row = {"step": step, "split": EVENT_SPLIT, "event": name, "message": message, **fields}
        row["time"] = time.time()
        if self.enabled:
            line = json.dumps(row, default=str)
            with self._lock:
                try:
                    with open(self.workdir / METRICS_FILE, "a") as f:
                        f.write(line + "\n")
                except OSError as e:
                    raise WriteError.of(self.workdir / METRICS_FILE, e) from e
                events = self._status.setdefault("events", [])
                events.append(row)
                del events[:-MAX_STATUS_EVENTS]
                self._write_status()
                self._written = True
            print(f"[event] step {step}: {name}: {message}", flush=True)
            if self.alert is not None:  # (process 0's: one alert per event)
                self.alert(row)
        return row

    def format_line(
        self, step: int, metrics: dict[str, float], split: str, eta: float | None = None
    ) -> str:
        """``[train] step 20/60 | loss 3.21 | ... | rss 512.0MiB | ETA 0:42`` (``*_bytes``
        in MiB)."""
        parts = [f"[{split}] step {step}/{self.total_steps}"]
        for key, value in metrics.items():
            if key.endswith("_bytes"):
                parts.append(f"{key[: -len('_bytes')]} {value / 2**20:.1f}MiB")
            else:
                parts.append(f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:.0f}")
        if split == "train":
            parts.append(f"ETA {format_duration(eta if eta is not None else math.nan)}")
        return " | ".join(parts)

    def status(self, state: str, step: int, *, eta: float | None = None, **fields: Any) -> None:
        """Updates ``status.json``: state, step, total steps, ETA, the latest metrics, and who
        writes it (pid, host, time)."""
        if not self.enabled:
            return
        with self._lock:
            self._status.update(fields)
            if eta is not None:  # else the last one stands
                self._status["eta_seconds"] = eta
            if step != self._status["step"]:
                self._status["step_time"] = time.time()
            self._status.update(state=state, step=step, total_steps=self.total_steps)
            self._write_status()
            self._written = True

    def _write_status(self) -> None:
        now = time.time()
        self._status.update(updated=now, heartbeat=now, pid=os.getpid(), host=_HOST)
        try:
            write_json_atomic(self.workdir / STATUS_FILE, self._status)
        except OSError as e:
            raise WriteError.of(self.workdir / STATUS_FILE, e) from e

    def _heartbeat(self, every: float) -> None:
        while not self._stop_beating.wait(every):
            if not self._written:
                continue
            with self._lock:
                try:
                    self._status["heartbeat"] = time.time()
                    write_json_atomic(self.workdir / STATUS_FILE, self._status)
                except OSError:  # a full disk: the run itself reports it
                    pass

    def keep_metrics_until(self, step: int, log: Callable[[str], None] | None = None) -> int:
        """Drops the rows of ``metrics.jsonl`` written after checkpoint ``step`` (by a run that
        went on past it before it died), so a resumed run writes each step once.

        Kept: every row before ``step`` and the train, eval, diagnostics, checkpoint and event
        rows of ``step`` itself (written with its checkpoint), and the rollback events whatever
        their step (they record the steps skipped, :mod:`jaxlm.train.health`); a half-written
        last line is dropped too. The events kept become ``status.json``'s ``events``.

        Args:
          step: the step the run resumes from.
          log: told how many rows were dropped, if any.

        Returns:
          The number of rows dropped.
        """
        path = self.workdir / METRICS_FILE
        if not self.enabled or not path.exists():
            return 0
        kept, dropped, events = [], 0, []
        for line in path.read_text().splitlines(keepends=True):
            row = _row(line)
            if row is not None and (
                row["step"] < step
                or (row["step"] == step and row["split"] in _BEFORE_SAVE)
                or (row["split"] == EVENT_SPLIT and row.get("action") == "rollback")
            ):
                kept.append(line)
                if row["split"] == EVENT_SPLIT:
                    events.append(row)
            else:
                dropped += 1
        with self._lock:
            self._status["events"] = events[-MAX_STATUS_EVENTS:]
        if dropped:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
            if log is not None:
                log(f"Dropped {dropped} rows of {path} written after step {step}")
        return dropped

    def close(self) -> None:
        """Stops the heartbeat; flushes and closes the TensorBoard writer (safe to call more
        than once)."""
        self._stop_beating.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._board() is not None:
            tb, self._tb = self._tb, None
            try:
                tb.close()
            except OSError as e:  # a full disk: the run's own error says so
                print(f"TensorBoard events in {self.workdir} not flushed: {e}", flush=True)


_HOST = socket.gethostname()
# The splits of a step's rows written by the time its checkpoint is (the save's own row just
# after it starts).
_BEFORE_SAVE = ("train", "eval", "diagnostics", "checkpoint", EVENT_SPLIT)


def _row(line: str) -> dict[str, Any] | None:
    """A metrics.jsonl row, or None for a damaged or half-written line."""
    if not line.endswith("\n"):
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(row, dict) and isinstance(row.get("step"), int) and "split" in row
    return row if ok else None


def _quiet_board_failures() -> None:
    """Keeps the traceback of tensorboardX's writer thread, dying on a failed write, off stderr:
    :meth:`Monitor._board` says it in one line, and the run's own error stays the only one.
    Installed once; every other thread's exception goes to the hook there was."""
    previous = threading.excepthook
    if getattr(previous, "_jaxlm", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        board = type(args.thread).__module__.startswith("tensorboardX")
        if not (board and issubclass(args.exc_type, OSError)):
            previous(args)

    hook._jaxlm = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def read_status(workdir: str | Path, log: Callable[[str], None] | None = None) -> dict | None:
    """The ``status.json`` of a run, or None when it has none or it cannot be read.

    An unreadable one (half-written by a dying disk, edited by hand) is reported and treated
    as unknown: the run's checkpoints say where it is.

    Args:
      workdir: the run folder.
      log: told why the file is unreadable (default: a warning).

    Returns:
      The status, a dict with at least a ``state``; None when there is none or it is unreadable.

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp()); _ = (run / STATUS_FILE).write_text("[1, 2]")
      >>> read_status(run, log=print)  # doctest: +ELLIPSIS
      Ignoring .../status.json: expected a JSON object with a "state", found [1, 2]...
    """
    path = Path(workdir) / STATUS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        return _unreadable(path, f"cannot read it ({e})", log)
    try:
        status = json.loads(text)
    except ValueError as e:
        return _unreadable(path, f"not JSON ({e})", log)
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        found = text.strip()[:60]
        return _unreadable(path, f'expected a JSON object with a "state", found {found}', log)
    if status["state"] == "finished" and not isinstance(status.get("final"), dict):
        found = json.dumps(status.get("final"))[:60]
        return _unreadable(
            path, f"a finished run's final metrics must be an object, not {found}", log
        )
    return status


def _unreadable(path: Path, why: str, log: Callable[[str], None] | None) -> None:
    message = f"Ignoring {path}: {why}; the run's state is unknown, its checkpoints decide"
    if log is None:
        warnings.warn(message, stacklevel=3)
    else:
        log(message)
    return None


def run_state(
    status: dict[str, Any] | None,
    *,
    now: float | None = None,
    stall_after: float | None = None,
) -> str:
    """What a status says, with a run that died without a word told from a live one.

    A status in an active state (``running``, ``evaluating``...) whose writer is gone (its
    pid no longer exists on this host, or no heartbeat for three intervals) is ``"crashed"``;
    a live ``running`` one whose step has not moved for ``stall_after`` seconds is
    ``"stalled"``; a missing or unreadable status is ``"unknown"``.

    Args:
      status: from :func:`read_status`.
      now: the time to judge heartbeats by (default: now).
      stall_after: seconds without a step (``step_time``, else ``updated``) after which a live
        running run is stalled; None: never.

    Returns:
      The state.

    Example:
      >>> run_state({"state": "running", "pid": 2**22 + 1, "host": _HOST, "heartbeat": 0.0})
      'crashed'
      >>> beat = {"state": "running", "heartbeat": 100.0, "step_time": 10.0}
      >>> run_state(beat, now=101.0), run_state(beat, now=101.0, stall_after=60)
      ('running', 'stalled')
      >>> run_state({"state": "finished"}), run_state(None)
      ('finished', 'unknown')
    """
    if status is None:
        return "unknown"
    state = status["state"]
    if state not in ACTIVE_STATES:
        return state
    if status.get("host") == _HOST and isinstance(status.get("pid"), int):
        if not _alive(status["pid"]):
            return "crashed"
    beat = status.get("heartbeat", status.get("updated"))
    now = time.time() if now is None else now
    if not isinstance(beat, int | float) or now - beat > 3 * HEARTBEAT_SECONDS + 5:
        return "crashed"
    moved = status.get("step_time", status.get("updated"))
    if (
        state == "running"
        and stall_after is not None
        and isinstance(moved, int | float)
        and now - moved > stall_after
    ):
        return "stalled"
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
