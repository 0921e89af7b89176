"""Health checks of a training run that act, each switchable in ``config.monitor``.

- **Non-finite loss** (``monitor.nonfinite``): "fail" stops the run with the step it appeared
  at (:class:`~jaxlm.errors.NonFiniteLoss`, nothing saved is lost); "warn" records an event
  and goes on (``optimizer.skip_nonfinite`` skips those updates).
- **Loss spikes** (``monitor.spike_factor`` > 0) and **gradient-norm explosions**
  (``monitor.grad_factor`` > 0): a loss (gradient norm) above the factor times its moving
  average, after ``monitor.spike_warmup`` steps. The averages and the verdict are computed in
  the compiled step by the optimizer's spike guard (:func:`jaxlm.transforms.guard_spikes`: the
  factors are traced hyperparameters, the averages live in the optimizer state, so a resumed
  run judges every step as the uninterrupted one did). Policies
  (``monitor.spike_policy``, ``monitor.grad_policy``):

  - ``warn``: an event; the update is applied.
  - ``skip``: the step's update is not applied (parameters and optimizer state stay as they
    were; the step counter, the data and the dropout keys move on); an event.
  - ``rollback``: the run restores its last checkpoint (the fresh initial state when there is
    none yet) and goes on from there with the offending step's windows skipped. "Skipped"
    means the step index advances past that step without an update: its batch (for streams,
    every stream's window of that step; the streams go on from the next window, the carry as
    it was, reset if the skipped window started a new epoch) is never trained on, and the run
    still ends at ``train.num_steps``, with one update fewer. The skipped steps are written to
    ``skipped_steps.json`` in the workdir before the restore, so the data order stays a pure
    function of (seed, step, skip set): a run killed after a rollback and resumed skips the
    same steps and ends exactly as the uninterrupted one. A check never lets a state past a
    flagged step be saved: the buffer fetches every step's verdict before each save.

- **A stalled run** (``monitor.stall_seconds`` > 0): a watchdog thread beside the heartbeat
  sees no step finish for that long (evaluation and saving do not count): ``status.json``
  says ``stalled`` (and ``"stalled": true``) and a ``stall`` event fires; the next step
  records ``stall_over``.
- **Saturated LSTM gates** (``monitor.gate_every`` > 0): every that many steps, the share of
  gate pre-activations whose sigmoid is below ``monitor.gate_saturation`` or above one minus
  it (the cell candidate: ``|tanh|`` above one minus it) on a held batch of validation windows
  (:func:`gate_saturation`, outside the train step), written as split ``gates``; a layer above
  ``monitor.gate_warn_fraction`` is a ``saturated_gates`` event, so a dying network shows.

Every event is a row ``{"step": k, "split": "event", "event": name, "message": ...}`` of
``metrics.jsonl``, an entry of ``status.json``'s ``events``, and one printed line: once when
the condition starts, not at every step while it lasts. With ``monitor.on_event="command"``
each one also runs ``monitor.command`` (:mod:`jaxlm.alerts`).

``monitor.inject`` (a testing aid, :func:`jaxlm.config.parse_inject`) puts a NaN or a spike
into the loss of a chosen step, or a host sleep after it; without it the compiled step is the
one it always was.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import JaxlmError
from jaxlm.monitor import write_json_atomic
from jaxlm.train.hooks import Chrono, Hook, Progress, every

SKIPS_FILE = "skipped_steps.json"


class Rollback(Exception):  # noqa: N818 (a request, not an error)
    """Raised by a check to roll the run back to its last checkpoint and skip ``step``.

    Attributes:
      step: the flagged step (its windows are skipped).
      event: the event's name.
      message: one line saying why.
    """

    def __init__(self, step: int, event: str, message: str):
        super().__init__(f"{event} at step {step}: {message}")
        self.step, self.event, self.message = step, event, message


class TooManyRollbacks(JaxlmError):
    """A run flagged more spikes under ``rollback`` than ``monitor.max_rollbacks`` allows."""


def read_skips(workdir: str | Path) -> frozenset[int]:
    """The steps a run skips (``skipped_steps.json``), empty when it has none.

    Args:
      workdir: the run folder.

    Returns:
      The steps.

    Raises:
      JaxlmError: the file exists but is not what :func:`record_skip` writes (the message
        names it; the data order depends on it, so it is not guessed).

    Example:
      >>> import tempfile
      >>> run = Path(tempfile.mkdtemp())
      >>> record_skip(run, 15, "loss_spike: loss 300 above 3 x its average")
      frozenset({15})
      >>> read_skips(run)
      frozenset({15})
    """
    path = Path(workdir) / SKIPS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError) as e:
        raise JaxlmError(f"{path}: cannot read the skipped steps ({e}); fix or remove it") from e
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, int) and s > 0 for s in steps):
        raise JaxlmError(
            f'{path}: expected {{"steps": [positive step, ...], ...}}, found {str(data)[:60]}'
        )
    return frozenset(steps)


def record_skip(workdir: str | Path, step: int, why: str) -> frozenset[int]:
    """Adds ``step`` to the run's skipped steps, durably (an atomic rewrite; process 0 writes).

    Args:
      workdir: the run folder.
      step: the step whose windows are skipped.
      why: one line, kept beside it.

    Returns:
      The skipped steps now.
    """
    path = Path(workdir) / SKIPS_FILE
    steps = set(read_skips(workdir)) | {step}
    if jax.process_index() == 0:
        old = json.loads(path.read_text()).get("why", {}) if path.exists() else {}
        why_all = {**old, str(step): why}
        write_json_atomic(path, {"steps": sorted(steps), "why": why_all})
    return frozenset(steps)


class StepChecks:
    """The per-step checks of the metrics the buffer fetches: non-finite losses and the spike
    guard's flags; an event when a condition starts, a :class:`Rollback` under "rollback".

    Args:
      event: ``event(step, name, message, **fields)`` (``Monitor.event``).
      spike_policy: ``monitor.spike_policy``.
      grad_policy: ``monitor.grad_policy``.
      spike_factor: for the messages.
      grad_factor: for the messages.

    Example:
      >>> seen = []
      >>> checks = StepChecks(lambda step, name, message, **f: seen.append((step, name)),
      ...                     spike_policy="warn", grad_policy="warn")
      >>> checks([(1, {"loss": 2.0}), (2, {"loss": 9.0, "loss_spike": 1.0}),
      ...         (3, {"loss": 9.5, "loss_spike": 1.0}), (4, {"loss": float("nan")})])
      >>> seen  # once per episode
      [(2, 'loss_spike'), (4, 'nonfinite_loss')]
    """

    def __init__(
        self,
        event: Callable[..., Any],
        *,
        spike_policy: str = "warn",
        grad_policy: str = "warn",
        spike_factor: float = 0.0,
        grad_factor: float = 0.0,
    ):
        self._event = event
        self._checks = (
            ("loss_spike", "loss", spike_policy, spike_factor, "loss"),
            ("grad_spike", "grad_norm", grad_policy, grad_factor, "gradient norm"),
        )
        self._active: dict[str, bool] = {}

    def __call__(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in rows:
            loss = values.get("loss", 0.0)
            bad = not math.isfinite(loss)
            if self._starts("nonfinite_loss", bad):
                self._event(step, "nonfinite_loss", f"training loss is {loss}", loss=loss)
            for name, key, policy, factor, what in self._checks:
                flagged = values.get(name, 0.0) > 0
                if flagged and policy == "rollback":
                    value = values.get(key, math.nan)
                    raise Rollback(
                        step, name, f"{what} {value:.4g} above {factor:g} x its moving average"
                    )
                if self._starts(name, flagged):
                    value = values.get(key, math.nan)
                    action = "update skipped" if policy == "skip" else "update applied"
                    self._event(
                        step,
                        name,
                        f"{what} {value:.4g} above {factor:g} x its moving average ({action})",
                        policy=policy,
                        value=value,
                    )

    def _starts(self, name: str, now: bool) -> bool:
        """Whether a condition starts at this step (it was not on at the step before)."""
        was = self._active.get(name, False)
        self._active[name] = now
        return now and not was


class Watchdog(Hook):
    """A thread that notices when no step finishes for ``seconds`` of training time.

    Evaluation and saving do not count (:meth:`Chrono.training_clock` stands still then). On a
    stall it calls ``on_stall(step, seconds_since_last_step)`` once; the next step calls
    ``on_resume(step, stalled_seconds)``.

    Args:
      seconds: the limit.
      chrono: the run's training clock.
      on_stall: told of a stall (from the watchdog's thread).
      on_resume: told when steps finish again.
      poll: how often the thread looks (default: a tenth of ``seconds``, at most 5 s).

    Example:
      >>> stalls = []
      >>> dog = Watchdog(0.05, Chrono(), lambda step, s: stalls.append(step), lambda *a: None)
      >>> dog.on_start(Progress(step=3, num_steps=10))
      >>> time.sleep(0.3); dog.close()
      >>> stalls
      [3]
    """

    def __init__(
        self,
        seconds: float,
        chrono: Chrono,
        on_stall: Callable[[int, float], None],
        on_resume: Callable[[int, float], None],
        *,
        poll: float | None = None,
    ):
        self.seconds, self._chrono = seconds, chrono
        self._on_stall, self._on_resume = on_stall, on_resume
        self._poll = poll if poll is not None else min(seconds / 10, 5.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = 0.0
        self._step = 0
        self._stalled_at: float | None = None
        self.stalled = False

    def on_start(self, progress: Progress) -> None:
        self._last, self._step = self._chrono.training_clock(), progress.step
        self._thread = threading.Thread(target=self._watch, name="jaxlm-watchdog", daemon=True)
        self._thread.start()

    def after_step(self, progress: Progress) -> None:
        self._last, self._step = self._chrono.training_clock(), progress.step
        if self.stalled:
            self.stalled = False
            self._on_resume(progress.step, time.monotonic() - (self._stalled_at or 0.0))

    def on_end(self, progress: Progress) -> None:
        self.close()

    def close(self) -> None:
        """Stops the thread (safe to call more than once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            idle = self._chrono.training_clock() - self._last
            if not self.stalled and idle > self.seconds:
                self.stalled, self._stalled_at = True, time.monotonic() - idle
                try:
                    self._on_stall(self._step, idle)
                except Exception as e:  # noqa: BLE001 (a full disk: the run reports it)
                    print(f"Stall watchdog: could not record the stall: {e}", flush=True)


class Faults(Hook):
    """The host faults of ``monitor.inject`` (a testing aid): ``sleep@K:S`` sleeps S seconds
    after step K (a stall the watchdog sees).

    Args:
      faults: :func:`jaxlm.config.parse_inject`'s triples (other kinds act in the step).
    """

    def __init__(self, faults: tuple[tuple[str, int, float], ...]):
        self._sleeps = {k: s for kind, k, s in faults if kind == "sleep"}

    def after_step(self, progress: Progress) -> None:
        seconds = self._sleeps.get(progress.step)
        if seconds:
            time.sleep(seconds)


# --------------------------------------------------------------------------------------------
# Saturated LSTM gates.

GATE_NAMES = ("input", "forget", "cell", "output")  # the fused gates' order (PyTorch's)


def gate_saturation(
    model: Any, params: Any, tokens_BxT: jax.Array, eps: float = 0.01
) -> dict[str, jax.Array]:
    """The share of an LSTM's gate pre-activations that are saturated, per layer and gate.

    A sigmoid gate (input, forget, output) is saturated where ``sigmoid(z) < eps`` or ``> 1 -
    eps``, i.e. ``|z| > log((1 - eps) / eps)``; the cell candidate where ``|tanh(z)| > 1 -
    eps``. The pre-activations ``z_t = x_t W_ih + b + h_{t-1} W_hh`` are recomputed from each
    layer's input and output sequences (the model run in evaluation mode from a zero state,
    with flax's ``capture_intermediates``), outside the fused recurrence kernel, so the train
    step is untouched.

    Args:
      model: a :class:`~jaxlm.models.RecurrentLM` with ``cell="lstm"``.
      params: its parameters.
      tokens_BxT: a held batch of token ids.
      eps: the saturation margin, in (0, 0.5).

    Returns:
      ``{"layers_<i>": share over its four gates, "layers_<i>/<gate>": per gate}`` as
      float32 scalars in [0, 1].

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> model = RecurrentLM(vocab_size=7, embed_dim=4, hidden_sizes=(5,), init_scale=3.0)
      >>> tokens = jnp.arange(12).reshape(2, 6) % 7
      >>> init = jax.jit(model.init)
      >>> params = init(jax.random.key(0), tokens, model.initial_carry(2))["params"]
      >>> shares = jax.jit(lambda p: gate_saturation(model, p, tokens))(params)
      >>> sorted(shares)[:2], 0.0 <= float(shares["layers_0"]) <= 1.0
      (['layers_0', 'layers_0/cell'], True)
    """
    from jaxlm.models.recurrent.layers import RecurrentLayer

    if getattr(model, "cell", None) != "lstm":
        raise ValueError(f"gate_saturation: an LSTM model is needed, not {type(model).__name__}")
    batch = tokens_BxT.shape[0]
    _, captured = model.apply(
        {"params": params},
        tokens_BxT,
        model.initial_carry(batch),
        capture_intermediates=lambda mdl, name: (
            name == "__call__" and isinstance(mdl, RecurrentLayer)
        ),
        mutable=["intermediates"],
    )
    inner = captured["intermediates"]
    f32 = jnp.float32
    x = jnp.take(params["embed"]["embedding"].astype(f32), tokens_BxT, axis=0, mode="clip")
    sigmoid_edge = math.log((1.0 - eps) / eps)
    tanh_edge = math.atanh(1.0 - eps)
    out: dict[str, jax.Array] = {}
    for i in range(len(model.hidden_sizes)):
        name = f"layers_{i}"
        h_BxTxH = inner[name]["__call__"][0][0].astype(f32)
        p = params[name]
        h_prev = jnp.concatenate([jnp.zeros_like(h_BxTxH[:, :1]), h_BxTxH[:, :-1]], axis=1)
        z = (
            x @ p["ih"]["kernel"].astype(f32)
            + p["ih"]["bias"].astype(f32)
            + h_prev @ p["hh"]["kernel"].astype(f32)
        )
        gates = jnp.split(z, 4, axis=-1)
        shares = []
        for gate, zg in zip(GATE_NAMES, gates, strict=True):
            edge = tanh_edge if gate == "cell" else sigmoid_edge
            share = jnp.mean(jnp.abs(zg) > edge, dtype=f32)
            out[f"{name}/{gate}"] = share
            shares.append(share)
        out[name] = jnp.mean(jnp.stack(shares))
        x = h_BxTxH
    return out


class GateSaturation(Hook):
    """Every ``every_steps`` steps, :func:`gate_saturation` on a held batch: written as split
    ``gates``, and a ``saturated_gates`` event when a layer's share first exceeds
    ``warn_fraction``.

    Args:
      measure: ``measure(params) -> {name: share}`` (jitted, the held batch bound).
      every_steps: the interval.
      warn_fraction: the share of saturated gates a layer may have.
      write: ``write(step, shares)`` (split ``gates``).
      event: ``event(step, name, message, **fields)``.
      chrono: paused while measuring.
    """

    def __init__(
        self,
        measure: Callable[[Any], dict[str, Any]],
        *,
        every_steps: int,
        warn_fraction: float,
        write: Callable[[int, dict[str, float]], None],
        event: Callable[..., Any],
        chrono: Chrono,
    ):
        self._measure, self._write, self._event = measure, write, event
        self.every_steps, self.warn_fraction = every_steps, warn_fraction
        self._chrono = chrono
        self._warned = False

    def after_step(self, progress: Progress) -> None:
        if not every(progress.step, self.every_steps):
            return
        with self._chrono.paused():
            measured = jax.device_get(self._measure(progress.state.params))
        shares = {k: float(v) for k, v in measured.items()}
        self._write(progress.step, shares)
        layers = {k: v for k, v in shares.items() if "/" not in k}
        worst = max(layers, key=layers.get)
        over = layers[worst] > self.warn_fraction
        if over and not self._warned:
            self._event(
                progress.step,
                "saturated_gates",
                f"{layers[worst]:.0%} of {worst}'s gates are saturated (more than "
                f"{self.warn_fraction:.0%}): the network may be dying",
                layer=worst,
                share=layers[worst],
            )
        self._warned = over


def held_tokens(tokens: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
    """The held batch the gate check reads: the first ``batch_size`` windows of ``seq_len``
    tokens of a split (repeated when the split is shorter).

    Args:
      tokens: a split's token ids.
      batch_size: B.
      seq_len: T.

    Returns:
      int32 ``[B, T]``.

    Example:
      >>> held_tokens(np.arange(10), 2, 3).tolist()
      [[0, 1, 2], [3, 4, 5]]
    """
    need = batch_size * seq_len
    flat = np.resize(np.asarray(tokens, np.int32), need) if len(tokens) < need else tokens[:need]
    return np.asarray(flat, np.int32).reshape(batch_size, seq_len)
