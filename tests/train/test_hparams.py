"""jaxlm.train.hparams: continuous hyperparameters are arguments of the compiled step, so runs
that differ only in them compute the same numbers as with constants and compile nothing new."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import optim, state
from jaxlm.errors import ConfigError
from jaxlm.train import Hook, Progress, hparams, train_and_evaluate
from jaxlm.train.steps import hyper_from_setup, make_train_step
from tests.helpers import count_fresh_compiles, smoke, train_losses

# Every continuous field of the LSTM switched on.
REGULARIZED = {
    "model.dropout": 0.2,
    "model.input_dropout": 0.1,
    "model.embed_dropout": 0.1,
    "model.weight_drop": 0.2,
    "model.gate_dropout_forget": 0.1,
    "model.gate_dropout_output": 0.1,
    "model.gate_dropout_update": 0.2,
    "model.ar": 0.5,
    "model.tar": 0.5,
    "optimizer.weight_decay": 1e-4,
    "optimizer.clip_norm": 0.5,
    "train.label_smoothing": 0.1,
}
BATCH = {
    "inputs": jnp.asarray(np.random.default_rng(0).integers(0, 30, (8, 32)), jnp.int32),
    "targets": jnp.asarray(np.random.default_rng(1).integers(0, 30, (8, 32)), jnp.int32),
    "reset": jnp.asarray(False),
}


def test_traced_hyperparameters_give_the_numbers_of_constants():
    config = smoke(**REGULARIZED, **{"optimizer.warmup_steps": 1})
    assert set(hparams.fields_in_force(config)) == {"optimizer.learning_rate", *REGULARIZED}
    setup = state.build(config, 30)
    constant = jax.jit(
        make_train_step(
            setup.model,
            setup.tx,
            optim.learning_rate(config),
            label_smoothing=config.train.label_smoothing,
        )
    )
    traced = jax.jit(make_train_step(None, None, None, hyper=hyper_from_setup(setup, config.train)))
    values = hparams.from_config(config)
    a = b = jax.jit(setup.init)()
    for _ in range(3):
        a, ma = constant(a, BATCH)
        b, mb = traced(b, BATCH, values)
        for key in ("loss", "grad_norm", "lr", "reg_loss"):
            np.testing.assert_allclose(float(ma[key]), float(mb[key]), rtol=1e-6, atol=1e-7)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # The values are arguments: another learning rate and dropout change the step's result.
    other = dict(values, **{"optimizer.learning_rate": np.float32(5e-3)})
    _, mc = traced(a, BATCH, other)
    _, md = traced(a, BATCH, values)
    assert float(mc["lr"]) != float(md["lr"])


def test_the_transformer_traces_with_traced_dropout():
    config = smoke("transformer", **{"model.dropout": 0.1, "model.attention_dropout": 0.1})
    setup = state.build(config, 30)
    step = make_train_step(None, None, None, hyper=hyper_from_setup(setup, config.train))
    values = hparams.abstract(hparams.from_config(config))
    assert {"model.dropout", "model.attention_dropout"} <= set(values)
    _, metrics = jax.eval_shape(step, setup.abstract, BATCH, values)
    assert metrics["loss"].shape == ()


def test_fields_at_zero_stay_static():
    config = smoke(**{"model.dropout": 0.0, "optimizer.clip_norm": 0.0})
    assert hparams.fields_in_force(config) == ("optimizer.learning_rate",)
    assert set(hparams.from_config(smoke(**{"model.dropout": 0.3}))) == {
        "optimizer.learning_rate",
        "optimizer.clip_norm",
        "model.dropout",
    }


def test_configs_that_differ_in_shapes_are_refused_by_name():
    a, b = smoke(), smoke(**{"data.batch_size": 4})
    hparams.check_same_shapes([a, smoke(**{"optimizer.learning_rate": 1e-2})])
    with pytest.raises(ConfigError, match=r"config\.data\.batch_size=4 differs .* 8"):
        hparams.check_same_shapes([a, b])


class FirstStep(Hook):
    """The time from the run's call to the end of its first step (compilation included)."""

    def __init__(self, start: float):
        self.start, self.seconds = start, None

    def after_step(self, progress: Progress) -> None:
        if self.seconds is None:
            jax.block_until_ready(progress.state.params)
            self.seconds = time.perf_counter() - self.start


def _run(config, workdir) -> FirstStep:
    hook = FirstStep(time.perf_counter())
    train_and_evaluate(config, workdir, hooks=[hook])
    return hook


def test_a_second_run_with_other_hyperparameters_compiles_nothing(tmp_path, capsys):
    # The suite runs with a persistent compilation cache (conftest.py): what run 1 compiled,
    # run 2 (other learning rate, dropout, weight decay; the same shapes) reads back.
    quick = {"train.num_steps": 2, "train.eval_every": 100, "train.log_every": 1}
    quick |= {"train.checkpoint_every": 2, "train.sample_tokens": 0, "train.eval_steps": 2}
    first = _run(smoke(**quick, **{"optimizer.weight_decay": 1e-4}), tmp_path / "a")
    other = {"optimizer.learning_rate": 7e-3, "model.dropout": 0.3, "optimizer.weight_decay": 3e-4}
    with count_fresh_compiles() as compiles:
        second = _run(smoke(**quick, **other), tmp_path / "b")
    fresh, hits = compiles()
    assert fresh == 0 and hits >= 4  # init, train step, eval window, initial carry
    assert train_losses(tmp_path / "a") != train_losses(tmp_path / "b")
    # The counter counts: another batch shape compiles its own step.
    with count_fresh_compiles() as compiles:
        _run(smoke(**quick, **{"data.seq_len": 24}), tmp_path / "c")
    assert compiles()[0] > 0
    with capsys.disabled():
        print(f"\nfirst step: run 1 {first.seconds:.2f} s, run 2 {second.seconds:.2f} s")


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_every_schedule_takes_a_traced_peak(schedule):
    config = smoke(**{"optimizer.schedule": schedule, "optimizer.steps_per_epoch": 10})
    opt = config.optimizer
    constant = optim.build_schedule(opt, 100)
    traced = jax.jit(lambda peak, s: optim.build_schedule(opt, 100, peak)(s))
    # float32 rounding: the constant schedules compute their end points in float64 first.
    for s in (0, 5, 10, 40, 99):
        want = float(constant(s))
        assert float(traced(jnp.float32(opt.learning_rate), s)) == pytest.approx(want, rel=1e-5)
        assert float(traced(jnp.float32(2 * opt.learning_rate), s)) == pytest.approx(
            2 * want, rel=1e-5
        )
