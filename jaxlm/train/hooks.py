"""Hooks: what the training loop does besides stepping, as small objects with one job each.

After every step the loop calls each hook's :meth:`Hook.after_step` with the run's
:class:`Progress`: the step, the state, the train metrics once they are fetched, the evaluation
results when there are any. A hook may act on the state (evaluation hands its loss to the
optimizer), ask for a checkpoint (:meth:`Progress.request_save`) or end the run
(:meth:`Progress.request_stop`: early stopping, pruning). The loop's own hooks, in order:

- :class:`Chrono`: training time only, paused during evaluation and saving (tokens/s, ETA);
- the stall watchdog (:class:`jaxlm.train.health.Watchdog`, ``monitor.stall_seconds``);
- :class:`Preemption`: SIGTERM or Ctrl-C checkpoints the step reached and stops;
- :class:`MetricsBuffer`: fetches a log step's metrics one step late, checks for NaN, hands
  every step's loss and spike flags to the health checks (:mod:`jaxlm.train.health`), writes;
- :class:`Evaluation`: the validation loss every ``train.eval_every`` steps;
- :class:`Diagnostics`: per-parameter norms every ``monitor.diagnostics_every`` steps, parameter
  histograms every ``monitor.histograms_every``;
- the LSTM gate check (:class:`jaxlm.train.health.GateSaturation`, ``monitor.gate_every``);
- the user's hooks (``train_and_evaluate(config, workdir, hooks=[...])``);
- :class:`Checkpointer`: saves every ``train.checkpoint_every`` steps, at the end, on request.

A hook that stops a run when the validation loss is low enough::

    class StopBelow(Hook):
        def __init__(self, target: float):
            self.target = target

        def after_step(self, progress: Progress) -> None:
            loss = (progress.evaluation or {}).get("loss")
            if loss is not None and loss < self.target:
                progress.request_stop(f"validation loss {loss:.3f} < {self.target}")
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxlm import transforms
from jaxlm.errors import JaxlmError, NonFiniteLoss


def every(step: int, n: int) -> bool:
    """Whether an action that runs every ``n`` steps is due at ``step`` (never when n <= 0).

    Args:
      step: steps done so far.
      n: the interval.

    Returns:
      True at ``n, 2n, ...``.

    Example:
      >>> [s for s in range(1, 10) if every(s, 4)]
      [4, 8]
    """
    return n > 0 and step > 0 and step % n == 0


class Stop(NamedTuple):
    """Why and how a run ends before its last step.

    Attributes:
      reason: one line for the log and ``status.json``.
      evaluate: run the final evaluation and sample (early stopping) or not (pruning).
      preempted: a signal asked the process to leave; it exits with status 143 and the same
        command resumes the run.
    """

    reason: str
    evaluate: bool = True
    preempted: bool = False


@dataclasses.dataclass
class Progress:
    """What hooks see after each step, and how they steer the run.

    Attributes:
      step: steps done (the state's step).
      num_steps: the run's last step.
      state: the :class:`~jaxlm.state.TrainState`; a hook may replace it.
      device_metrics: the last step's metrics as device arrays (fetching them stalls the
        device; :class:`MetricsBuffer` fetches them one step late).
      metrics: train metrics fetched during this call, as floats (a log step's, one step
        late), else None.
      metrics_step: the step ``metrics`` belong to.
      evaluation: validation results computed during this call (``loss``, ``bits``,
        ``perplexity``, ``tokens``), else None.
      stop: set by :meth:`request_stop`: the loop ends after this step.
      save_requested: set by :meth:`request_save`: checkpoint this step.
      skipped: steps whose windows are not trained on (a rollback's,
        :mod:`jaxlm.train.health`): the step index advances past them without an update, and
        ``device_metrics`` is None after them.

    Example:
      >>> progress = Progress(step=30, num_steps=100, evaluation={"loss": 1.2})
      >>> if progress.evaluation["loss"] < 1.5:
      ...     progress.request_stop("good enough")
      >>> progress.stop
      Stop(reason='good enough', evaluate=True, preempted=False)
    """

    step: int
    num_steps: int
    state: Any = None
    device_metrics: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    metrics_step: int | None = None
    evaluation: dict[str, float] | None = None
    stop: Stop | None = None
    save_requested: bool = False
    skipped: frozenset[int] = frozenset()

    def request_stop(self, reason: str, *, evaluate: bool = True) -> None:
        """Ends the run after this step: it is checkpointed, then evaluated unless told not.

        Args:
          reason: one line for the log and ``status.json`` (state ``"stopped"``).
          evaluate: run the final evaluation and sample (False: a pruned trial, say).
        """
        if self.stop is None:
            self.stop = Stop(reason, evaluate=evaluate)

    def request_save(self) -> None:
        """Checkpoints this step (in addition to the periodic checkpoints)."""
        self.save_requested = True


class Hook:
    """A periodic action of the training loop; override the methods you need.

    Every method receives the run's :class:`Progress`; the defaults do nothing.
    """

    def on_start(self, progress: Progress) -> None:
        """Before the first step (of this process: after a resume, at the restored step)."""

    def after_step(self, progress: Progress) -> None:
        """After each training step has been dispatched."""

    def on_end(self, progress: Progress) -> None:
        """After the last step, or the one a stop was requested at; not after an error."""


class Chrono(Hook):
    """Measures training time alone: from the end of the first step (compilation excluded),
    paused while evaluating and saving, so tokens/s and the ETA describe training.

    Args:
      clock: seconds as a float (``time.perf_counter``; tests pass a fake).

    Example:
      >>> t = iter([0.0, 10.0, 12.0, 20.0, 30.0])
      >>> chrono = Chrono(clock=lambda: next(t))
      >>> chrono.after_step(Progress(step=1, num_steps=100))  # starts at t=0
      >>> with chrono.paused():  # 10 .. 12 is not training time
      ...     pass
      >>> chrono.steps_per_second(11)  # 10 steps in 20 - 2 seconds
      0.5555555555555556
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start: tuple[float, int] | None = None
        self._paused = 0.0
        self._pause_start: float | None = None

    def after_step(self, progress: Progress) -> None:
        if self._start is None:
            jax.block_until_ready(progress.device_metrics)  # the first step, compiled and run
            self._start = (self._clock(), progress.step)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside the block does not count as training time."""
        t0 = self._clock()
        self._pause_start = t0
        try:
            yield
        finally:
            self._paused += self._clock() - t0
            self._pause_start = None

    def training_clock(self) -> float:
        """A clock in seconds that stands still while paused (evaluating, saving): what the
        stall watchdog measures (:class:`jaxlm.train.health.Watchdog`)."""
        now = self._clock()
        inside = 0.0 if self._pause_start is None else now - self._pause_start
        return now - self._paused - inside

    def steps_per_second(self, step: int) -> float | None:
        """Training steps per second from the first timed step to ``step`` (None before)."""
        if self._start is None or step <= self._start[1]:
            return None
        t0, s0 = self._start
        return (step - s0) / max(self._clock() - t0 - self._paused, 1e-9)

    def eta_seconds(self, step: int, num_steps: int) -> float | None:
        """Training seconds left to ``num_steps`` at the current rate (None before a rate)."""
        rate = self.steps_per_second(step)
        return None if rate is None else (num_steps - step) / rate


# Per-step metrics the buffer fetches for every step (not just log steps), for the checks.
WATCHED = ("loss", "grad_norm", "loss_spike", "grad_spike")
# Flags of one step, not written on the log lines.
FLAGS = ("loss_spike", "grad_spike")


class MetricsBuffer(Hook):
    """Writes the train metrics of every ``log_every``-th step, fetched one step late.

    A log step's metrics are fetched after the next step has been dispatched, so the device
    never waits for the host. The loss written is the mean over every step since the last log,
    each checked: a NaN or infinite loss raises :class:`~jaxlm.errors.NonFiniteLoss` unless
    non-finite losses are tolerated, and ``check`` sees every step's :data:`WATCHED` values
    once (the health checks, :mod:`jaxlm.train.health`). :meth:`sync` fetches everything at
    once, before an evaluation or a save, so no NaN state (and no state past a spike that
    rolls back) is ever saved. Steps the run skips (``progress.device_metrics`` None) have no
    metrics. ``tokens_per_s`` and ``step_time_s`` are over training time alone, since the first
    step (:class:`Chrono`); the per-parameter diagnostics are left to :class:`Diagnostics`.

    Args:
      write: ``write(step, metrics, eta)`` records a log line (``Monitor.write``).
      chrono: gives tokens/s, the step time and the ETA.
      log_every: the logging interval (and the last step is logged).
      tokens_per_step: tokens in one training batch.
      skip_nonfinite: non-finite losses are tolerated (the optimizer skips those updates, or
        ``config.monitor.nonfinite`` is "warn"): no error.
      resources: ``resources(steps_per_second) -> metrics`` added to each line (memory, MFU:
        :func:`jaxlm.train.resources.meter`).
      check: ``check([(step, {name: float}), ...])`` for the steps fetched, in order, each
        once; it may raise (a rollback).
    """

    def __init__(
        self,
        write: Callable[[int, dict[str, float], float | None], None],
        chrono: Chrono,
        *,
        log_every: int,
        tokens_per_step: int,
        skip_nonfinite: bool = False,
        resources: Callable[[float | None], dict[str, float]] | None = None,
        check: Callable[[list[tuple[int, dict[str, float]]]], None] | None = None,
    ):
        self._write, self._chrono = write, chrono
        self.log_every, self.tokens_per_step = log_every, tokens_per_step
        self.skip_nonfinite = skip_nonfinite
        self._resources = resources
        self._check = check
        self._steps: list[tuple[int, dict[str, Any]]] = []  # since the last log step (device)
        self._pending: tuple[int, dict[str, Any], list] | None = None
        self._last: dict[str, Any] | None = None  # the last trained step's metrics
        self._checked = -1  # the last step the checks have seen

    def after_step(self, progress: Progress) -> None:
        metrics = progress.device_metrics
        if metrics is not None:
            self._steps.append((progress.step, {k: metrics[k] for k in WATCHED if k in metrics}))
            self._last = metrics
        if self._pending is not None:  # the step after a log step has been dispatched
            self._flush(progress)
        due = every(progress.step, self.log_every) or progress.step == progress.num_steps
        if due and self._steps:  # (a skipped step with nothing since has nothing to log)
            self._pending = (progress.step, self._last, self._steps)
            self._steps = []

    def sync(self, progress: Progress) -> None:
        """Writes the pending log step now and checks every loss since (before eval or save)."""
        if self._pending is not None:
            self._flush(progress)
        if self._steps:
            self._fetch(self._steps)

    def _flush(self, progress: Progress) -> None:
        step, metrics, rows = self._pending
        self._pending = None
        losses = self._fetch(rows)
        scalars = {k: v for k, v in metrics.items() if k not in FLAGS and k != "diagnostics"}
        values = {k: float(v) for k, v in jax.device_get(scalars).items()}
        values["loss"] = float(np.mean(losses))
        rate = self._chrono.steps_per_second(step)
        if rate is not None:
            values["tokens_per_s"] = rate * self.tokens_per_step
            values["step_time_s"] = 1.0 / rate
        if self._resources is not None:
            values.update(self._resources(rate))
        self._write(step, values, self._chrono.eta_seconds(step, progress.num_steps))
        progress.metrics, progress.metrics_step = values, step

    def _fetch(self, rows: list[tuple[int, dict[str, Any]]]) -> np.ndarray:
        """The losses of ``rows`` as numpy (one fetch); new steps are checked (NaN raises)."""
        fetched = jax.device_get([values for _, values in rows])
        losses = np.asarray([f["loss"] for f in fetched], np.float64).reshape(-1)
        new = [
            (step, {k: float(v) for k, v in f.items()})
            for (step, _), f in zip(rows, fetched, strict=True)
            if step > self._checked
        ]
        if not new:
            return losses
        self._checked = new[-1][0]
        for step, values in new:
            if not np.isfinite(values["loss"]) and not self.skip_nonfinite:
                raise NonFiniteLoss(f"training loss is {values['loss']} at step {step}", step=step)
        if self._check is not None:
            self._check(new)
        return losses


class Evaluation(Hook):
    """The validation loss every ``every_steps`` steps (not at the last: the final evaluation
    covers the whole split), handed to the optimizer for reduce-on-plateau and NT-ASGD; the
    results hold the evaluation's wall time too (``seconds``).

    Args:
      evaluate: ``evaluate(params, max_windows) -> results`` over the validation split.
      every_steps: the interval (``train.eval_every``).
      max_windows: windows per evaluation (``train.eval_steps``; 0: the whole split).
      feedback: ``feedback(opt_state, loss) -> opt_state``
        (:func:`jaxlm.transforms.report_validation_loss`, jitted).
      write: ``write(step, results)`` records them (split ``eval``).
      chrono: paused while evaluating.
      buffer: synced first, so the train line of the step comes before.
    """

    def __init__(
        self,
        evaluate: Callable[[Any, int], dict[str, float]],
        *,
        every_steps: int,
        max_windows: int,
        feedback: Callable[[Any, Any], Any],
        write: Callable[[int, dict[str, float]], None],
        chrono: Chrono,
        buffer: MetricsBuffer,
    ):
        self._evaluate, self._feedback, self._write = evaluate, feedback, write
        self.every_steps, self.max_windows = every_steps, max_windows
        self._chrono, self._buffer = chrono, buffer

    def after_step(self, progress: Progress) -> None:
        if not every(progress.step, self.every_steps) or progress.step >= progress.num_steps:
            return
        self._buffer.sync(progress)
        state = progress.state
        t0 = time.perf_counter()
        with self._chrono.paused():  # the feedback and the writing too (its first call compiles)
            params = transforms.averaged_params(state.opt_state, state.params)
            results = self._evaluate(params, self.max_windows)
            results = {**results, "seconds": time.perf_counter() - t0}
            opt_state = self._feedback(state.opt_state, results["loss"])
            self._write(progress.step, results)
        progress.state = state.replace(opt_state=opt_state)
        progress.evaluation = results


class Diagnostics(Hook):
    """Writes the per-parameter gradient, parameter and update norms the step computes
    (:data:`jaxlm.train.steps.DIAGNOSTICS`) every ``every_steps`` steps, and histograms of the
    parameters every ``histograms_every`` steps.

    The norms are fetched at their step, before the next is dispatched: one wait for the device
    per interval, so the row of a step is written before that step's checkpoint. Writing them
    and the histograms (the parameters fetched, binned by the writer) is the host's work,
    paused out of the training time. With several processes, parameters no process holds
    whole are left out.

    Args:
      write: ``write(step, values)`` records the norms by name (``grad_norm/<path>``...).
      names: :func:`jaxlm.train.steps.diagnostic_names` of the parameters.
      every_steps: the interval (``monitor.diagnostics_every``; 0: never).
      histogram: ``histogram(step, arrays)`` records the parameters by path (numpy arrays).
      histograms_every: its interval (``monitor.histograms_every``; 0: never).
      chrono: paused while the norms are written and the histograms made.

    Example:
      >>> import jax.numpy as jnp
      >>> rows = []
      >>> hook = Diagnostics(lambda step, values: rows.append((step, values)),
      ...                    ["grad_norm/w", "param_norm/w", "update_norm/w"], every_steps=2)
      >>> progress = Progress(step=2, num_steps=4)
      >>> progress.device_metrics = {"diagnostics": jnp.array([[0.5], [3.0], [0.1]])}
      >>> hook.after_step(progress); rows[0][0], sorted(rows[0][1])
      (2, ['grad_norm/w', 'param_norm/w', 'update_norm/w'])
    """

    def __init__(
        self,
        write: Callable[[int, dict[str, float]], None],
        names: Sequence[str],
        *,
        every_steps: int,
        histogram: Callable[[int, dict[str, np.ndarray]], None] | None = None,
        histograms_every: int = 0,
        chrono: Chrono | None = None,
    ):
        self._write, self._names, self._histogram = write, names, histogram
        self.every_steps, self.histograms_every = every_steps, histograms_every
        self._chrono = chrono

    def after_step(self, progress: Progress) -> None:
        metrics = progress.device_metrics or {}
        if every(progress.step, self.every_steps) and "diagnostics" in metrics:
            jax.block_until_ready(metrics["diagnostics"])  # the step itself is training time
            with self._paused():
                self.write_now(progress.step, metrics)
        if self._histogram is not None and every(progress.step, self.histograms_every):
            with self._paused():
                self._histogram(progress.step, host_arrays(progress.state.params))

    def _paused(self) -> contextlib.AbstractContextManager:
        return self._chrono.paused() if self._chrono else contextlib.nullcontext()

    def write_now(self, step: int, metrics: dict[str, Any]) -> None:
        """Fetches a step's norms and writes them (waits for the step)."""
        norms = np.asarray(jax.device_get(metrics["diagnostics"]), np.float64).reshape(-1)
        self._write(step, dict(zip(self._names, norms.tolist(), strict=True)))


def host_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The leaves of ``tree`` that this process holds whole, fetched, by path.

    Args:
      tree: device arrays (parameters).

    Returns:
      ``{path: numpy array}`` (with several processes, a leaf split over them is left out).

    Example:
      >>> import jax.numpy as jnp
      >>> host_arrays({"head": {"bias": jnp.zeros(2)}})
      {'head/bias': array([0., 0.], dtype=float32)}
    """
    from jaxlm.tree import flatten

    whole = {
        path: leaf
        for path, leaf in flatten(tree).items()
        if getattr(leaf, "is_fully_addressable", True)
    }
    return {path: np.asarray(value) for path, value in jax.device_get(whole).items()}


class Checkpointer(Hook):
    """Saves the state every ``every_steps`` steps, at the last step, when asked, and when the
    run stops early; waits for the last save at the end.

    Saves run in the background; a failed one (a full disk) is noticed at the next step, not
    at the next save: ``check`` raises the save's error, ``failed`` turns it into the one-line
    error the run stops with. The checkpoints saved before stay as they are.

    Args:
      save: ``save(step, state)`` starts a save (``jaxlm.checkpoints.save`` with the meta).
      wait: waits for background saves to finish (raises a failed one's error).
      every_steps: the interval (``train.checkpoint_every``).
      chrono: paused while saving.
      buffer: synced first, so no state with a NaN loss is saved.
      check: raises the error of a background save that failed (cheap: no waiting).
      failed: ``failed(step, error) -> exception`` to raise for the save of ``step``.
      timed: ``timed(step, seconds)`` is told how long training stood still for each save
        (waiting for the save before, starting this one; orbax writes in the background).
    """

    def __init__(
        self,
        save: Callable[[int, Any], None],
        wait: Callable[[], None],
        *,
        every_steps: int,
        chrono: Chrono,
        buffer: MetricsBuffer,
        check: Callable[[], None] = lambda: None,
        failed: Callable[[int, BaseException], BaseException] | None = None,
        timed: Callable[[int, float], None] | None = None,
    ):
        self._save, self._wait, self._check = save, wait, check
        self._failed, self._timed = failed, timed
        self.every_steps = every_steps
        self._chrono, self._buffer = chrono, buffer
        self._in_flight: int | None = None  # the step of the save that may still be running

    def after_step(self, progress: Progress) -> None:
        self._guarded(self._check)
        due = every(progress.step, self.every_steps) or progress.step == progress.num_steps
        if not (due or progress.save_requested or progress.stop is not None):
            return
        self._buffer.sync(progress)
        t0 = time.perf_counter()
        with self._chrono.paused():
            # Orbax waits for the previous save before starting one: waiting here first
            # names a failure of it as that save's, not this one's.
            self._guarded(self._wait)
            self._in_flight = progress.step
            self._guarded(self._save, progress.step, progress.state)
            if progress.stop is not None:
                self._guarded(self._wait)
            if self._timed is not None:
                self._timed(progress.step, time.perf_counter() - t0)
        progress.save_requested = False

    def on_end(self, progress: Progress) -> None:
        with self._chrono.paused():
            self._guarded(self._wait)

    def raise_failed_save(self) -> None:
        """Waits for the save in flight and raises its error if it failed (called when another
        write fails: on a full disk the failed save is the news)."""
        self._guarded(self._wait)

    def _guarded(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except (OSError, ValueError, RuntimeError) as e:  # what orbax and tensorstore raise
            if self._failed is None or self._in_flight is None or isinstance(e, JaxlmError):
                raise
            raise self._failed(self._in_flight, e) from e


class Preemption(Hook):
    """Turns SIGTERM and Ctrl-C (SIGINT) into a stop: the step reached is checkpointed and the
    run exits (status 143 and ``status.json`` "preempted" for SIGTERM, 130 and "interrupted"
    for Ctrl-C); the same command resumes it. A second Ctrl-C raises KeyboardInterrupt at once.

    Use it as a context manager around the whole run, so that a signal during data
    preparation, restore or the final evaluation is noticed too. A handler installed before it
    that has a true ``raised`` attribute (the command line's, set before the slow imports)
    hands on a SIGTERM it already received.

    With several processes (``jax.distributed``), a signal that any one of them receives stops
    them all at the same step, so that they save that step together: each step every process
    contributes the signal it received (0 for none) to a maximum over all devices, dispatched
    without waiting and read one step later (the same step on every process). Before the loop
    and after the final evaluation they agree at once (:meth:`agree`).

    Args:
      immediate: keep the default actions instead (a run with nothing to checkpoint).

    Attributes:
      signum: the signal that stops the run (``signal.SIGTERM`` or ``signal.SIGINT``), else
        None; with several processes, once they have agreed on it.
      received: the signal this process received, else None.

    Example:
      >>> with Preemption() as preemption:
      ...     preemption.requested
      False
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, *, immediate: bool = False):
        self.signum: int | None = None
        self.received: int | None = None
        self._immediate = immediate
        self._old: dict[int, Any] = {}
        self._agreement: _ProcessMax | None = None  # several processes, from on_start
        self._pending: jax.Array | None = None

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT`` (the signal received)."""
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> Preemption:
        handler = signal.SIG_DFL if self._immediate else self._handle
        for signum in self.SIGNALS:
            if self._immediate and signum == signal.SIGINT:
                continue  # KeyboardInterrupt, as ever
            try:
                self._old[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: signals stay as they are
                break
        if getattr(self._old.get(signal.SIGTERM), "raised", False):
            self.signum = self.received = signal.SIGTERM
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C")
        if self.received is None:
            self.received = signum
            if self._agreement is None:  # one process: it stops by itself
                self.signum = signum
            if signum == signal.SIGINT:
                print(
                    "Ctrl-C: saving a checkpoint and stopping (Ctrl-C again to stop at once)",
                    flush=True,
                )

    def agree(self) -> None:
        """With several processes: waits until every one has said which signal it received,
        and stops on any (with one process there is nothing to wait for)."""
        if self._agreement is not None:
            self._pending = None
            self._adopt(int(self._agreement(self.received or 0)))

    def _adopt(self, seen: int) -> None:
        if seen and self.signum is None:
            self.signum = seen

    def on_start(self, progress: Progress) -> None:
        if jax.process_count() > 1:
            self._agreement = _ProcessMax()
            self.agree()
        if self.requested:  # before the loop: the checkpoints on disk are kept as they are
            progress.stop = Stop(
                f"{self.name} before training resumed at step {progress.step}; nothing new to save",
                evaluate=False,
                preempted=True,
            )

    def after_step(self, progress: Progress) -> None:
        if self._agreement is not None:  # read the last step's agreement, start this one's
            pending, self._pending = self._pending, self._agreement(self.received or 0)
            if pending is not None:
                self._adopt(int(pending))
        if self.requested and progress.stop is None:  # read once per step
            progress.stop = Stop(
                f"{self.name} at step {progress.step}", evaluate=False, preempted=True
            )


class _ProcessMax:
    """The maximum of one integer per process, a replicated scalar on every process:
    ``self(value)`` dispatches it and returns at once (reading it waits)."""

    def __init__(self):
        devices = jax.devices()
        mesh = jax.sharding.Mesh(np.array(devices), ("all",))
        self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
        self._shape = (len(devices),)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._max = jax.jit(lambda x: x.max(), out_shardings=replicated)
        self._inputs: dict[int, jax.Array] = {}  # by value: no host-to-device copy per step

    def __call__(self, value: int) -> jax.Array:
        if value not in self._inputs:
            local = np.full((jax.local_device_count(),), value, np.int32)
            self._inputs[value] = jax.make_array_from_process_local_data(
                self._sharding, local, self._shape
            )
        return self._max(self._inputs[value])
