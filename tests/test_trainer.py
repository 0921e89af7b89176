"""The training loop: a smoke run end to end, exact resume, 1 vs 4 devices, bad input."""

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxlm import checkpoint, checkpoint_tools, trainer
from tests.helpers import ROOT, smoke, train_cli


def train_losses(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]


def final_params(workdir):
    return checkpoint_tools.load_state(workdir)[0]["params"]


def test_cli_smoke_run_trains_checkpoints_and_finishes(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cli(f"--workdir={workdir}")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tokens_per_s" in out.stdout and "ETA" in out.stdout
    assert "Final validation loss" in out.stdout and "bits/char" in out.stdout
    assert "Sample:\nThe " in out.stdout
    losses = train_losses(workdir)
    assert losses[-1][1] < losses[0][1] - 0.5  # from ~4.5 (uniform over 104) downwards
    status = json.loads((workdir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 60
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "30",
        "60",
    ]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "tokenizer.json").read_text())["kind"] == "char"
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "already finished at step 60" in again.stdout


def _sigterm_caught(pid):
    """Whether the process has a SIGTERM handler installed (Linux: SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _status(workdir):
    try:
        return json.loads((workdir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_cli_sigterm_checkpoints_exits_143_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cli(
        f"--workdir={workdir}",
        "--config.train.log_every=1",
        "--config.train.eval_every=100000",
        "--config.train.checkpoint_every=100000",
    )
    proc = subprocess.Popen(
        cmd + ["--config.train.num_steps=100000"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: _status(workdir).get("step", 0) > 0, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM at step" in err
    status = _status(workdir)
    steps = checkpoint.manager(workdir, read_only=True).all_steps()
    assert status["state"] == "preempted" and list(steps) == [status["step"]]
    saved = status["step"]
    again = subprocess.run(
        cmd + [f"--config.train.num_steps={saved + 3}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'}/{saved}" in again.stdout
    assert _status(workdir)["state"] == "finished" and _status(workdir)["step"] == saved + 3


def test_cli_sigterm_during_startup_exits_143(tmp_path):
    # Sent as soon as the command line's handler is in place: during the imports, before the
    # trainer's own handler, the data, the model or the loop exist.
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    workdir = tmp_path / "run"
    cmd = train_cli(f"--workdir={workdir}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for(lambda: _sigterm_caught(proc.pid), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM before training" in err
    assert _status(workdir)["state"] == "preempted"
    assert checkpoint.manager(workdir, read_only=True).all_steps() == []


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_resume_after_kill_is_bit_exact(tmp_path, monkeypatch, schedule):
    # plateau: the optimizer state also depends on validation losses seen along the way.
    config = smoke(
        **{
            "train.num_steps": 40,
            "train.checkpoint_every": 10,
            "train.eval_every": 10,
            "train.log_every": 10,
            "optimizer.schedule": schedule,
            "optimizer.plateau_patience": 0,
        }
    )
    straight = trainer.train_and_evaluate(config, tmp_path / "straight")

    real_save = checkpoint.save

    def save_then_die(mgr, state, *args, **kwargs):
        real_save(mgr, state, *args, **kwargs)
        mgr.wait_until_finished()
        raise Killed  # the process dies right after its first checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        trainer.train_and_evaluate(config, tmp_path / "resumed")
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.manager(tmp_path / "resumed", read_only=True).latest_step() == 10
    resumed = trainer.train_and_evaluate(config, tmp_path / "resumed")

    assert resumed["validation_loss"] == straight["validation_loss"]
    assert resumed["test_loss"] == straight["test_loss"]
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    tail = [loss for step, loss in train_losses(tmp_path / "straight") if step > 10]
    assert tail == [loss for step, loss in train_losses(tmp_path / "resumed") if step > 10]


def test_one_and_four_devices_give_the_same_losses(tmp_path):
    overrides = {
        "train.num_steps": 20,
        "train.log_every": 5,
        "train.eval_every": 20,
        "model.dropout": 0.0,
    }
    one = trainer.train_and_evaluate(smoke(**overrides, **{"parallel.data": 1}), tmp_path / "1")
    four = trainer.train_and_evaluate(smoke(**overrides, **{"parallel.data": 4}), tmp_path / "4")
    l1, l4 = train_losses(tmp_path / "1"), train_losses(tmp_path / "4")
    assert [s for s, _ in l1] == [5, 10, 15, 20]
    np.testing.assert_allclose([v for _, v in l1], [v for _, v in l4], rtol=1e-5)
    np.testing.assert_allclose(one["validation_loss"], four["validation_loss"], rtol=1e-5)


def test_dropout_runs_agree_across_device_counts(tmp_path):
    overrides = {"train.num_steps": 10, "train.log_every": 5, "train.eval_every": 10}
    trainer.train_and_evaluate(smoke(**overrides, **{"parallel.data": 1}), tmp_path / "1")
    trainer.train_and_evaluate(smoke(**overrides, **{"parallel.data": 2}), tmp_path / "2")
    np.testing.assert_allclose(
        [v for _, v in train_losses(tmp_path / "1")],
        [v for _, v in train_losses(tmp_path / "2")],
        rtol=1e-5,
    )


def test_incompatible_workdir_is_refused_and_kept(tmp_path):
    config = smoke(**{"train.num_steps": 10, "train.checkpoint_every": 10, "train.eval_every": 10})
    trainer.train_and_evaluate(config, tmp_path)
    other = smoke(**{"train.num_steps": 10, "model.hidden_sizes": (32, 32)})
    with pytest.raises(
        ValueError,
        match=r"incompatible config:\n  model.hidden_sizes: \[64, 64\]"
        r" -> \[32, 32\]",
    ):
        trainer.train_and_evaluate(other, tmp_path)
    assert checkpoint.manager(tmp_path, read_only=True).latest_step() == 10


def test_a_field_newer_than_the_checkpoint_blocks_resuming_only_when_changed():
    # A checkpoint written before model.remat existed: its saved config lacks the field.
    saved = checkpoint.config_json(smoke())
    del saved["model"]["remat"]
    assert checkpoint.incompatible_fields(saved, smoke()) == []
    assert checkpoint.incompatible_fields(saved, smoke(**{"model.remat": True})) == [
        "model.remat: '<absent>' -> True"
    ]
    # A field the current config lacks is still a difference.
    saved = checkpoint.config_json(smoke())
    saved["model"]["retired_switch"] = 1
    assert checkpoint.incompatible_fields(saved, smoke()) == [
        "model.retired_switch: 1 -> '<absent>'"
    ]


@pytest.mark.parametrize(
    "field, value",
    [("optimizer.clip_norm", 0.0), ("optimizer.schedule", "plateau"), ("precision", "float16")],
)
def test_changes_of_optimizer_state_structure_are_refused_by_name(tmp_path, field, value):
    base = {
        "train.num_steps": 10,
        "train.checkpoint_every": 10,
        "train.eval_every": 10,
        "train.sample_tokens": 0,
    }
    trainer.train_and_evaluate(smoke(**base), tmp_path)
    with pytest.raises(ValueError, match=rf"incompatible config:\n  {field}: "):
        trainer.train_and_evaluate(smoke(**base, **{field: value}), tmp_path)
    # Changes that keep the optimizer state's structure still resume.
    same = {"optimizer.clip_norm": 0.5, "optimizer.schedule": "constant", "precision": "bfloat16"}[
        field
    ]
    assert trainer.train_and_evaluate(smoke(**base, **{field: same}), tmp_path)["step"] == 10

    # A state of another structure is not "damage": named, and nothing is moved aside.
    from jaxlm import optim, precision
    from jaxlm.models import get_model

    config = smoke(**base, **{field: value})
    policy = precision.Policy.from_string(config.precision)
    tx = precision.wrap_optimizer(optim.build_optimizer(config), policy)
    model = get_model(config.model, 104, policy)
    target = jax.eval_shape(trainer.make_init_fn(model, tx, 8, 32, 0))
    mgr = checkpoint.manager(tmp_path)
    with pytest.raises(checkpoint.StructureMismatch, match="only in this run: opt_state/"):
        checkpoint.restore_latest_intact(mgr, target, quarantine=True, log=pytest.fail)
    mgr.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]


def test_missing_corpus_fails_before_training(tmp_path):
    config = smoke(**{"data.corpus": "text_files", "data.path": str(tmp_path / "none.txt")})
    with pytest.raises(ValueError, match="corpus file not found: .*none.txt"):
        trainer.train_and_evaluate(config, tmp_path / "run")


def test_unknown_config_field_is_named(tmp_path):
    cmd = train_cli(
        "--config.train.num_steps=3",
        "--config.model.hiden_size=3",
        "--config.train.log_every=1",
        "--workdir=/tmp/never",
    )
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "hiden_size" in out.stderr
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "FATAL Flags parsing error: unknown config field in --config.model.hiden_size: "
        '\'hiden_size\' Did you mean "hidden_sizes" instead of "hiden_size"?'
    )
    # An unknown section is named too.
    out = subprocess.run(
        cmd[:4] + ["--config.nosuch.x=3"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.stderr.strip().splitlines()[-1] == (
        "FATAL Flags parsing error: unknown config field in --config.nosuch.x: 'nosuch'"
    )
    # An AttributeError inside the config file is its own bug, not an unknown field.
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return object().no_such_attribute\n")
    out = subprocess.run(
        cmd[:3] + [f"--config={broken}", "--config.train.num_steps=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0
    assert "unknown config field" not in out.stderr
    assert "no_such_attribute" in out.stderr and "broken.py" in out.stderr


def test_unknown_model_and_optimizer_names(tmp_path):
    with pytest.raises(ValueError, match="config.model.name: unknown model 'lstmm'"):
        trainer.train_and_evaluate(smoke(**{"model.name": "lstmm"}), tmp_path / "a")
    with pytest.raises(ValueError, match="config.optimizer.name: unknown optimizer 'adamm'"):
        trainer.train_and_evaluate(smoke(**{"optimizer.name": "adamm"}), tmp_path / "b")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.hidden_sizes", ("abc",), "config.model.hidden_sizes: expected a tuple"),
        ("data.batch_size", 0, "config.data.batch_size: expected a positive integer"),
        ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate: expected a positive"),
        ("train.eval_steps", -1, r"config.train.eval_steps: expected an integer >= 0, got -1"),
        ("train.sample_tokens", -5, r"config.train.sample_tokens: expected an integer >= 0"),
        (
            "optimizer.accumulate_steps",
            0,
            r"config.optimizer.accumulate_steps: expected a positive integer \(1: no accumulation"
            r"\), got 0",
        ),
    ],
)
def test_bad_field_values_are_named(tmp_path, field, value, message):
    config = smoke()
    config.unlock()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(config, tmp_path)


def test_evaluating_no_tokens_is_an_error():
    from jaxlm import sharding
    from jaxlm.models import get_model

    config = smoke()
    model = get_model(config.model, 10, trainer.Policy.from_string("float32"))
    init = trainer.make_init_fn(model, trainer.optim.build_optimizer(config), 2, 4, 0)
    params = jax.jit(init)().params
    mesh = sharding.make_mesh(1, 1)
    tokens = np.arange(40, dtype=np.int32) % 10
    ok = trainer.evaluate(model, params, tokens, mesh, batch_size=2, seq_len=4)
    assert ok["tokens"] > 0 and math.isfinite(ok["loss"])
    with pytest.raises(ValueError, match="evaluated no tokens"):
        trainer.evaluate(model, params, tokens, mesh, batch_size=2, seq_len=4, max_windows=-1)
    # The initial carry's jitted function is built once per (model, batch size, mesh).
    before = trainer._initial_carry.cache_info().hits
    again = trainer.evaluate(model, params, tokens, mesh, batch_size=2, seq_len=4)
    assert trainer._initial_carry.cache_info().hits > before and again == ok


def test_init_from_with_feature_preset_trains_only_the_output_layer(tmp_path):
    base = {"train.num_steps": 10, "train.checkpoint_every": 10, "train.eval_every": 10}
    trainer.train_and_evaluate(smoke(**base), tmp_path / "pretrained")
    tuned = smoke(
        **base, **{"init_from": str(tmp_path / "pretrained"), "finetune.strategy": "feature"}
    )
    trainer.train_and_evaluate(tuned, tmp_path / "tuned")
    before, after = final_params(tmp_path / "pretrained"), final_params(tmp_path / "tuned")
    for name in ("embed", "layers_0", "layers_1"):
        for x, y in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True):
            np.testing.assert_array_equal(x, y)
    assert np.abs(before["head"]["kernel"] - after["head"]["kernel"]).max() > 0


def test_damaged_newest_checkpoint_falls_back_and_says_so(tmp_path, monkeypatch, capsys):
    config = smoke(
        **{
            "train.num_steps": 30,
            "train.checkpoint_every": 10,
            "train.eval_every": 30,
            "train.log_every": 10,
        }
    )
    real_save, saves = checkpoint.save, []

    def save_twice_then_die(mgr, state, *args, **kwargs):
        real_save(mgr, state, *args, **kwargs)
        mgr.wait_until_finished()
        saves.append(1)
        if len(saves) == 2:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_twice_then_die)
    with pytest.raises(Killed):
        trainer.train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(checkpoint, "save", real_save)
    data_files = sorted(
        (tmp_path / "checkpoints/20/state").glob("ocdbt.process_*/d/*"),
        key=lambda f: f.stat().st_size,
    )
    with open(data_files[-1], "r+b") as f:  # truncate the largest array file
        f.truncate(data_files[-1].stat().st_size // 3)
    final = trainer.train_and_evaluate(config, tmp_path)
    out = capsys.readouterr().out
    assert f"Skipping damaged checkpoint {tmp_path / 'checkpoints' / '20'}" in out
    assert f"Resumed from {tmp_path / 'checkpoints'}/10" in out
    assert final["step"] == 30 and math.isfinite(final["validation_loss"])


def test_nan_between_log_lines_is_caught_before_a_save(tmp_path, monkeypatch):
    # Logs at 20 and 40, saves at 15 and 30; the loss (and state) go NaN from step 22 on.
    config = smoke(
        **{
            "train.num_steps": 40,
            "train.log_every": 20,
            "train.eval_every": 100,
            "train.checkpoint_every": 15,
            "train.sample_tokens": 0,
        }
    )
    real_make = trainer.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = real_make(*args, **kwargs)

        def train_step(state, batch):
            state, metrics = step_fn(state, batch)
            bad = state.step >= 22
            params = jax.tree.map(lambda p: jax.numpy.where(bad, jax.numpy.nan, p), state.params)
            return state.replace(params=params), dict(
                metrics, loss=jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])
            )

        return train_step

    monkeypatch.setattr(trainer, "make_train_step", poisoned)
    closed = []
    real_close = trainer.monitor.Monitor.close
    monkeypatch.setattr(
        trainer.monitor.Monitor,
        "close",
        lambda self: closed.append(self._tb is not None) or real_close(self),
    )
    with pytest.raises(FloatingPointError, match="at step 22; checkpoints up to step 15 are"):
        trainer.train_and_evaluate(config, tmp_path)
    assert closed == [True]  # a failed run closes its TensorBoard writer too
    assert checkpoint.manager(tmp_path, read_only=True).all_steps() == [15]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 22


def test_float16_run_uses_dynamic_loss_scaling(tmp_path):
    overrides = {"train.num_steps": 20, "train.log_every": 10, "train.eval_every": 20}
    f32 = trainer.train_and_evaluate(smoke(**overrides), tmp_path / "f32")
    f16 = trainer.train_and_evaluate(smoke(**overrides, precision="float16"), tmp_path / "f16")
    rows = [json.loads(line) for line in (tmp_path / "f16/metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all("loss_scale" in r and r["loss_scale"] >= 1 for r in train_rows)
    assert abs(f16["validation_loss"] - f32["validation_loss"]) < 0.05
