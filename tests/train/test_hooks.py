"""Each hook of the training loop on its own, without a subprocess; and a user's hook in a run."""

from __future__ import annotations

import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.errors import NonFiniteLoss
from jaxlm.state import TrainState
from jaxlm.train.hooks import (
    Checkpointer,
    Chrono,
    Evaluation,
    Hook,
    MetricsBuffer,
    Preemption,
    Progress,
    every,
)
from tests.helpers import ROOT


class FakeClock:
    """A clock that advances only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_state(w: float = 1.0) -> TrainState:
    params = {"w": jnp.full(2, w)}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optax.sgd(0.1).init(params),
        rng=jax.random.PRNGKey(0),
        carry=None,
    )


def step_progress(progress: Progress, loss: float, **metrics: float) -> Progress:
    """Advances ``progress`` by one step whose device metrics have this loss."""
    progress.step += 1
    progress.metrics = progress.metrics_step = progress.evaluation = None
    progress.device_metrics = {
        "loss": jnp.float32(loss),
        **{k: jnp.float32(v) for k, v in metrics.items()},
    }
    return progress


def test_every():
    assert [s for s in range(0, 13) if every(s, 4)] == [4, 8, 12]
    assert not any(every(s, 0) for s in range(5))


def test_chrono_counts_training_time_only():
    clock = FakeClock()
    chrono = Chrono(clock)
    progress = Progress(step=0, num_steps=100)
    assert chrono.steps_per_second(0) is None and chrono.eta_seconds(0, 100) is None
    clock.now = 5.0  # the first step, compilation included: not timed
    chrono.after_step(step_progress(progress, 1.0))
    clock.now = 15.0  # 10 s of training: steps 2..11
    with chrono.paused():
        clock.now = 45.0  # 30 s evaluating
    clock.now = 55.0  # 10 s more training: steps 12..21
    assert chrono.steps_per_second(1) is None
    assert chrono.steps_per_second(21) == pytest.approx(20 / 20.0)
    assert chrono.eta_seconds(21, 100) == pytest.approx(79.0)
    chrono.after_step(step_progress(progress, 1.0))  # later steps do not restart it
    assert chrono.steps_per_second(21) == pytest.approx(1.0)


def buffer_and_log(log_every=2, skip_nonfinite=False, clock=None):
    written = []
    chrono = Chrono(clock or FakeClock())
    buffer = MetricsBuffer(
        lambda step, values, eta: written.append((step, values, eta)),
        chrono,
        log_every=log_every,
        tokens_per_step=10,
        skip_nonfinite=skip_nonfinite,
    )
    return buffer, chrono, written


def test_metrics_buffer_fetches_one_step_late_and_averages_the_interval():
    buffer, chrono, written = buffer_and_log(log_every=2)
    progress = Progress(step=0, num_steps=6)
    for i, loss in enumerate([4.0, 2.0, 3.0, 1.0, 5.0, 7.0], 1):
        step_progress(progress, loss, grad_norm=float(i))
        chrono.after_step(progress)
        buffer.after_step(progress)
        if i == 2:  # step 2 is a log step: nothing fetched yet
            assert written == [] and progress.metrics is None
        if i == 3:  # fetched after step 3 was dispatched
            assert [w[0] for w in written] == [2] and progress.metrics_step == 2
            assert progress.metrics["loss"] == pytest.approx(3.0)  # mean of steps 1, 2
            assert progress.metrics["grad_norm"] == 2.0  # the log step's own value
    buffer.sync(progress)  # the last step is logged too, when synced
    assert [(s, v["loss"]) for s, v, _ in written] == [(2, 3.0), (4, 2.0), (6, 6.0)]


def test_metrics_buffer_leaves_out_tokens_per_s_until_there_is_a_rate():
    clock = FakeClock()
    buffer, chrono, written = buffer_and_log(log_every=1, clock=clock)
    progress = Progress(step=0, num_steps=3)
    for _ in range(3):
        step_progress(progress, 1.0)
        chrono.after_step(progress)
        clock.now += 2.0
        buffer.after_step(progress)
    buffer.sync(progress)
    assert "tokens_per_s" not in written[0][1]  # step 1: the first timed step
    assert all(np.isfinite(v["tokens_per_s"]) for _, v, _ in written[1:])
    assert all(eta is not None for _, _, eta in written[1:])


def test_metrics_buffer_raises_on_the_first_non_finite_loss_of_an_interval():
    buffer, chrono, _ = buffer_and_log(log_every=4)
    progress = Progress(step=0, num_steps=10)
    for loss in [1.0, 2.0, np.nan, 3.0, 1.0]:
        step_progress(progress, loss)
        chrono.after_step(progress)
        if progress.step < 5:
            buffer.after_step(progress)
    with pytest.raises(NonFiniteLoss, match="training loss is nan at step 3") as e:
        buffer.after_step(progress)  # step 5: the log step 4 is fetched
    assert e.value.step == 3
    skipping, chrono, written = buffer_and_log(log_every=1, skip_nonfinite=True)
    progress = Progress(step=0, num_steps=10)
    for loss in [np.nan, 1.0]:
        step_progress(progress, loss)
        chrono.after_step(progress)
        skipping.after_step(progress)
    assert np.isnan(written[0][1]["loss"])


def test_sync_checks_the_losses_since_the_last_log_line():
    buffer, chrono, written = buffer_and_log(log_every=10)
    progress = Progress(step=0, num_steps=100)
    for loss in [1.0, np.inf]:
        step_progress(progress, loss)
        chrono.after_step(progress)
        buffer.after_step(progress)
    with pytest.raises(NonFiniteLoss, match="inf at step 2"):
        buffer.sync(progress)
    assert written == []


def test_evaluation_runs_every_n_steps_and_feeds_the_optimizer():
    clock = FakeClock()
    buffer, chrono, written = buffer_and_log(log_every=1, clock=clock)
    calls, feedback, results = [], [], []

    def evaluate(params, windows):
        clock.now += 100.0  # evaluating takes 100 s, not counted as training
        calls.append((float(params["w"][0]), windows))
        return {"loss": 2.5, "bits": 3.6, "perplexity": 12.2, "tokens": 8.0}

    def fake_feedback(opt_state, loss):
        feedback.append(float(loss))
        return opt_state

    evaluation = Evaluation(
        evaluate,
        every_steps=2,
        max_windows=3,
        feedback=fake_feedback,
        write=lambda step, r: results.append((step, r["loss"])),
        chrono=chrono,
        buffer=buffer,
    )
    progress = Progress(step=0, num_steps=4, state=fake_state(0.5))
    seen = []
    for _ in range(4):
        step_progress(progress, 1.0)
        chrono.after_step(progress)
        clock.now += 1.0
        buffer.after_step(progress)
        evaluation.after_step(progress)
        seen.append(progress.evaluation)
    # Step 2 only: step 4 is the last, where the final evaluation covers the whole split.
    assert calls == [(0.5, 3)] and feedback == [2.5] and results == [(2, 2.5)]
    assert seen[1]["loss"] == 2.5 and seen[0] is None and seen[3] is None
    assert [w[0] for w in written][:2] == [1, 2]  # step 2's train line came before its eval
    assert chrono.steps_per_second(4) == pytest.approx(3 / 4.0)  # 100 s of evaluation left out


def test_checkpointer_saves_periodically_at_the_end_on_request_and_on_stop():
    buffer, chrono, _ = buffer_and_log(log_every=100)
    saved, waits = [], []
    saver = Checkpointer(
        lambda step, state: saved.append(step),
        lambda: waits.append(saved[-1] if saved else None),
        every_steps=3,
        chrono=chrono,
        buffer=buffer,
    )
    progress = Progress(step=0, num_steps=10, state=fake_state())
    for _ in range(7):
        step_progress(progress, 1.0)
        chrono.after_step(progress)
        buffer.after_step(progress)
        if progress.step == 4:
            progress.request_save()
        saver.after_step(progress)
    assert saved == [3, 4, 6] and not progress.save_requested
    step_progress(progress, 1.0)
    progress.request_stop("enough")
    buffer.after_step(progress)
    saver.after_step(progress)
    # Each save first waits for the one before (so that its failure is named as its own), and
    # a stopped run waits for its last save.
    assert saved == [3, 4, 6, 8] and waits == [None, 3, 4, 6, 8]
    saver.on_end(progress)
    assert waits[-1] == 8 and len(waits) == 6


def test_checkpointer_saves_no_state_with_a_nan_loss():
    buffer, chrono, _ = buffer_and_log(log_every=100)
    saved = []
    saver = Checkpointer(
        lambda step, state: saved.append(step), lambda: None, every_steps=2, chrono=chrono,
        buffer=buffer,
    )  # fmt: skip
    progress = Progress(step=0, num_steps=10, state=fake_state())
    for loss in [1.0, np.nan]:
        step_progress(progress, loss)
        chrono.after_step(progress)
        buffer.after_step(progress)
        if progress.step == 2:
            with pytest.raises(NonFiniteLoss, match="at step 2"):
                saver.after_step(progress)
        else:
            saver.after_step(progress)
    assert saved == []


def test_preemption_turns_sigterm_into_a_stop_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        progress = Progress(step=5, num_steps=10)
        preemption.on_start(progress)
        assert progress.stop is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested
        preemption.after_step(progress)
        assert progress.stop.preempted and not progress.stop.evaluate
        assert progress.stop.reason == "SIGTERM at step 5"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_stops_like_sigterm_and_a_second_one_interrupts_at_once(capsys):
    before = signal.getsignal(signal.SIGINT)
    with Preemption() as preemption:
        progress = Progress(step=4, num_steps=10)
        os.kill(os.getpid(), signal.SIGINT)  # handled: no KeyboardInterrupt
        assert preemption.signum == signal.SIGINT and preemption.name == "SIGINT"
        preemption.after_step(progress)
        assert progress.stop.preempted and progress.stop.reason == "SIGINT at step 4"
        assert "Ctrl-C again to stop at once" in capsys.readouterr().out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        os.kill(os.getpid(), signal.SIGTERM)  # a SIGTERM after a Ctrl-C changes nothing
        assert preemption.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


def test_a_failed_background_save_stops_the_run_at_the_next_step():
    buffer, chrono, _ = buffer_and_log(log_every=100)
    saved, failure = [], []

    def check():
        if failure:
            raise failure[0]

    saver = Checkpointer(
        lambda step, state: saved.append(step),
        lambda: check(),
        every_steps=3,
        chrono=chrono,
        buffer=buffer,
        check=check,
        failed=lambda step, error: RuntimeError(f"save {step} failed: {error.strerror}"),
    )
    progress = Progress(step=0, num_steps=10, state=fake_state())
    for _ in range(3):
        step_progress(progress, 1.0)
        buffer.after_step(progress)
        saver.after_step(progress)
    assert saved == [3]
    failure.append(OSError(28, "No space left on device"))  # the save of step 3, in the background
    step_progress(progress, 1.0)
    buffer.after_step(progress)
    with pytest.raises(RuntimeError, match="save 3 failed: No space left on device"):
        saver.after_step(progress)  # step 4: no save due, the failure is noticed anyway
    with pytest.raises(RuntimeError, match="save 3 failed"):
        saver.raise_failed_save()
    failure[0] = KeyError("a bug of ours")  # not an error a save raises: it passes as it is
    with pytest.raises(KeyError, match="a bug of ours"):
        saver.after_step(progress)


def test_preemption_takes_over_an_earlier_flag_and_stops_before_the_loop():
    class Early:
        raised = True

        def __call__(self, *args):
            pass

    old = signal.signal(signal.SIGTERM, Early())
    try:
        with Preemption() as preemption:
            progress = Progress(step=7, num_steps=10)
            preemption.on_start(progress)
        assert "before training resumed at step 7" in progress.stop.reason
    finally:
        signal.signal(signal.SIGTERM, old)


def test_the_first_stop_request_wins():
    progress = Progress(step=3, num_steps=10)
    progress.request_stop("first", evaluate=False)
    progress.request_stop("second")
    assert progress.stop.reason == "first" and not progress.stop.evaluate


def test_the_users_hook_of_the_architecture_page_stops_a_run_early(tmp_path, monkeypatch, capsys):
    # docs/architecture.md's ten-line hook, run as written there (from a fresh folder).
    page = (ROOT / "docs/architecture.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(example, namespace)
    final, run = namespace["final"], tmp_path / "runs/stop_below"
    assert issubclass(namespace["StopBelow"], Hook)
    assert final["step"] == 30 and final["stop_reason"].startswith("validation loss")
    assert "test_loss" in final and final["sample"]  # stopped early, still evaluated
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] == 30
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["30"]
    assert capsys.readouterr().out.strip().endswith(f"30 {final['stop_reason']}")
