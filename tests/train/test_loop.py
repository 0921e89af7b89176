"""The training loop: a run end to end, exact resume, 1 vs 4 devices, fine-tuning, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess

import jax
import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import monitor, state
from jaxlm.checkpoints.tools import saved_shardings
from jaxlm.train import health
from jaxlm.train import hooks as hooks_lib
from jaxlm.train.evaluate import Evaluator
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import final_params, smoke, train_losses


class Killed(Exception):
    pass


def _rows_json(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _rows(workdir) -> list[tuple[int, str]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["split"]) for r in map(json.loads, lines)]


# augment: every edit on, whole words, windows drawn past the margin (jaxlm.data.augment).
AUGMENT = {
    "data.augment.replace": 0.1,
    "data.augment.delete": 0.1,
    "data.augment.insert": 0.1,
    "data.augment.swap": 0.1,
    "data.augment.unit": "word",
}
# rollback: a spike injected at step 15 (jaxlm.train.health).
ROLLBACK = {
    "monitor.spike_factor": 3.0,
    "monitor.spike_policy": "rollback",
    "monitor.spike_warmup": 5,
    "monitor.inject": "spike@15",
}
# A mixture's second source, for the variants that name {proxy}.
PROXY = "".join(f"To be or not to be, line {i}: that is the question.\n" for i in range(400))


@pytest.mark.parametrize(
    "schedule, variant",
    [
        ("cosine", {}),
        ("plateau", {}),
        # augmented raw windows from streams given to two sources by weight, each source with
        # its own epochs and resets (one case for both, to keep the suite short)
        ("cosine", {**AUGMENT, "data.mixture": "builtin:0.4,proxy=text_files:{proxy}:0.6"}),
        # a loss spike at step 15, rolled back to step 10 with step 15's windows skipped: the
        # killed run rolls back before it dies, the resumed one skips step 15 from the record
        ("cosine", ROLLBACK),
    ],
    ids=["cosine", "plateau", "augment+mixture", "spike-rollback"],
)
@pytest.mark.heavy
def test_resume_after_kill_is_bit_exact(tmp_path, monkeypatch, schedule, variant):
    # plateau: the optimizer state also depends on validation losses seen along the way.
    (tmp_path / "proxy.txt").write_text(PROXY)
    proxy = tmp_path / "proxy.txt"
    variant = {k: v.format(proxy=proxy) if isinstance(v, str) else v for k, v in variant.items()}
    config = smoke(
        **{
            "train.num_steps": 40,
            "train.checkpoint_every": 10,
            "train.eval_every": 10,
            "train.log_every": 10,
            "optimizer.schedule": schedule,
            "optimizer.plateau_patience": 0,
            **variant,
        }
    )
    straight = train_and_evaluate(config, tmp_path / "straight")

    real_save = ck.save

    def die_at_the_second_save(mgr, step, state, meta):
        if step > 10:  # the process trained and logged on to step 20, then died
            raise Killed
        real_save(mgr, step, state, meta)

    monkeypatch.setattr(ck, "save", die_at_the_second_save)
    with pytest.raises(Killed):
        train_and_evaluate(config, tmp_path / "resumed")
    monkeypatch.setattr(ck, "save", real_save)
    assert ck.manager(tmp_path / "resumed", read_only=True).latest_step() == 10
    assert (20, "eval") in _rows(tmp_path / "resumed")
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    # One row per step, as if the run had never stopped: those written past the checkpoint
    # it resumed from were dropped before they were written again.
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")

    assert resumed["validation_loss"] == straight["validation_loss"]
    assert resumed["test_loss"] == straight["test_loss"]
    for key in straight:  # a mixture's per-source losses and proportions too
        if "/" in key:
            assert resumed[key] == straight[key], key
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    tail = [loss for step, loss in train_losses(tmp_path / "straight") if step > 10]
    assert tail == [loss for step, loss in train_losses(tmp_path / "resumed") if step > 10]
    if variant is ROLLBACK:  # both ran without step 15's windows, and say so
        for run in ("straight", "resumed"):
            assert health.read_skips(tmp_path / run) == {15}
            events = [r for r in _rows_json(tmp_path / run) if r["split"] == "event"]
            assert [(r["step"], r["event"], r["restored"]) for r in events] == [
                (15, "loss_spike", 10)
            ]
        assert max(tail) < 10  # the x100 spike never reached a log line


def test_one_and_four_devices_give_the_same_losses(tmp_path):
    overrides = {
        "train.num_steps": 20,
        "train.log_every": 5,
        "train.eval_every": 20,
        "model.dropout": 0.0,
    }
    one = train_and_evaluate(smoke(**overrides, **{"parallel.data": 1}), tmp_path / "1")
    four = train_and_evaluate(smoke(**overrides, **{"parallel.data": 4}), tmp_path / "4")
    l1, l4 = train_losses(tmp_path / "1"), train_losses(tmp_path / "4")
    assert [s for s, _ in l1] == [5, 10, 15, 20]
    np.testing.assert_allclose([v for _, v in l1], [v for _, v in l4], rtol=1e-5)
    np.testing.assert_allclose(one["validation_loss"], four["validation_loss"], rtol=1e-5)


class _StopWithoutEvaluating(hooks_lib.Hook):
    """Stops a run at a step, checkpointed, without the final whole-split evaluation."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, progress: hooks_lib.Progress) -> None:
        if progress.step == self.step:
            progress.request_stop(f"step {self.step}", evaluate=False)


# Slow (21 s): restoring onto another mesh is tested by tests/checkpoints/tools/test_reshard.py
# and each strategy's training by tests/test_sharding.py; this resumes a run across them.
@pytest.mark.slow
def test_a_checkpoint_saved_under_fsdp_resumes_under_fsdp_and_tensor(tmp_path):
    def config(strategy: str, data: int, model: int):
        return smoke(
            "transformer",
            **{
                "train.num_steps": 20,
                "train.log_every": 5,
                "train.eval_every": 100,
                "train.checkpoint_every": 10,
                "model.num_layers": 1,
                "parallel.strategy": strategy,
                "parallel.data": data,
                "parallel.model": model,
            },
        )

    straight, run = tmp_path / "straight", tmp_path / "run"
    train_and_evaluate(config("data", 4, 1), straight, hooks=[_StopWithoutEvaluating(20)])
    train_and_evaluate(config("fsdp", 4, 1), run, hooks=[_StopWithoutEvaluating(10)])
    kernel = "params/blocks_0/qkv/kernel"
    assert saved_shardings(run, 10)[kernel] == {"mesh": {"data": 4, "model": 1}, "spec": ["data"]}
    # The same workdir on a 2 x 2 mesh: restored onto this run's shardings (checksums checked).
    train_and_evaluate(config("fsdp+tensor", 2, 2), run, hooks=[_StopWithoutEvaluating(20)])
    assert saved_shardings(run, 20)[kernel] == {
        "mesh": {"data": 2, "model": 2},
        "spec": ["data", "model"],
    }
    assert [s for s, _ in train_losses(run)] == [5, 10, 15, 20]
    np.testing.assert_allclose(
        [v for _, v in train_losses(run)], [v for _, v in train_losses(straight)], rtol=1e-5
    )


def test_dropout_runs_agree_across_device_counts(tmp_path):
    overrides = {"train.num_steps": 10, "train.log_every": 5, "train.eval_every": 10}
    train_and_evaluate(smoke(**overrides, **{"parallel.data": 1}), tmp_path / "1")
    train_and_evaluate(smoke(**overrides, **{"parallel.data": 2}), tmp_path / "2")
    np.testing.assert_allclose(
        [v for _, v in train_losses(tmp_path / "1")],
        [v for _, v in train_losses(tmp_path / "2")],
        rtol=1e-5,
    )


def test_incompatible_workdir_is_refused_and_kept(tmp_path):
    config = smoke(**{"train.num_steps": 10, "train.checkpoint_every": 10, "train.eval_every": 10})
    train_and_evaluate(config, tmp_path)
    other = smoke(**{"train.num_steps": 10, "model.hidden_sizes": (32, 32)})
    with pytest.raises(
        ValueError,
        match=r"incompatible config:\n  model.hidden_sizes: \[64, 64\]"
        r" -> \[32, 32\]",
    ):
        train_and_evaluate(other, tmp_path)
    assert ck.manager(tmp_path, read_only=True).latest_step() == 10


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
    train_and_evaluate(smoke(**base), tmp_path)
    with pytest.raises(ValueError, match=rf"incompatible config:\n  {field}: "):
        train_and_evaluate(smoke(**base, **{field: value}), tmp_path)
    # Changes that keep the optimizer state's structure still resume.
    same = {"optimizer.clip_norm": 0.5, "optimizer.schedule": "constant", "precision": "bfloat16"}[
        field
    ]
    assert train_and_evaluate(smoke(**base, **{field: same}), tmp_path)["step"] == 10

    # A state of another structure is not "damage": named, and nothing is moved aside.
    target = state.build(smoke(**base, **{field: value}), 104).abstract
    mgr = ck.manager(tmp_path)
    with pytest.raises(ck.StructureMismatch, match="only in this run: opt_state/"):
        ck.restore_latest_intact(mgr, target, quarantine=True, log=pytest.fail)
    mgr.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]


def test_missing_corpus_fails_before_training(tmp_path):
    config = smoke(**{"data.corpus": "text_files", "data.path": str(tmp_path / "none.txt")})
    with pytest.raises(ValueError, match="config.data.path: .*none.txt does not exist"):
        train_and_evaluate(config, tmp_path / "run")


def test_init_from_with_feature_preset_trains_only_the_output_layer(tmp_path, monkeypatch):
    base = {"train.num_steps": 10, "train.checkpoint_every": 10, "train.eval_every": 10}
    monkeypatch.chdir(tmp_path)  # the paths below are relative, as users write them
    train_and_evaluate(smoke(**base), "pretrained")
    tuned = smoke(**base, **{"init_from": "pretrained", "finetune.strategy": "feature"})
    train_and_evaluate(tuned, "tuned")
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
    real_save, saves = ck.save, []

    def save_twice_then_die(mgr, step, state, meta):
        real_save(mgr, step, state, meta)
        mgr.wait_until_finished()
        saves.append(1)
        if len(saves) == 2:
            raise Killed

    monkeypatch.setattr(ck, "save", save_twice_then_die)
    with pytest.raises(Killed):
        train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(ck, "save", real_save)
    data_files = sorted(
        (tmp_path / "checkpoints/20/state").glob("ocdbt.process_*/d/*"),
        key=lambda f: f.stat().st_size,
    )
    with open(data_files[-1], "r+b") as f:  # truncate the largest array file
        f.truncate(data_files[-1].stat().st_size // 3)
    final = train_and_evaluate(config, tmp_path)
    out = capsys.readouterr().out
    assert f"Skipping damaged checkpoint {tmp_path / 'checkpoints' / '20'}" in out
    assert f"Resumed from {tmp_path / 'checkpoints'}/10" in out
    assert final["step"] == 30 and math.isfinite(final["validation_loss"])


def test_nan_between_log_lines_is_caught_before_a_save(tmp_path, monkeypatch):
    # Logs at 20 and 40, saves at 15 and 30; the loss (and then the state) NaN at step 22.
    config = smoke(
        **{
            "train.num_steps": 40,
            "train.log_every": 20,
            "train.eval_every": 100,
            "train.checkpoint_every": 15,
            "train.sample_tokens": 0,
            "monitor.inject": "nan@22",
        }
    )
    closed = []
    real_close = monitor.Monitor.close
    monkeypatch.setattr(
        monitor.Monitor, "close", lambda self: closed.append(True) or real_close(self)
    )
    with pytest.raises(FloatingPointError, match="at step 22; checkpoints up to step 15 are"):
        train_and_evaluate(config, tmp_path)
    assert closed == [True]  # a failed run closes its TensorBoard writer too
    assert ck.manager(tmp_path, read_only=True).all_steps() == [15]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 22
    (failure,) = status["events"]  # the failure is an event too (and alerts, when asked)
    assert failure["event"] == "failure" and "at step 22" in failure["message"]


def test_float16_run_uses_dynamic_loss_scaling(tmp_path):
    overrides = {"train.num_steps": 20, "train.log_every": 10, "train.eval_every": 20}
    f32 = train_and_evaluate(smoke(**overrides), tmp_path / "f32")
    f16 = train_and_evaluate(smoke(**overrides, precision="float16"), tmp_path / "f16")
    rows = [json.loads(line) for line in (tmp_path / "f16/metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all("loss_scale" in r and r["loss_scale"] >= 1 for r in train_rows)
    assert abs(f16["validation_loss"] - f32["validation_loss"]) < 0.05


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with ck.exclusive(workdir):
        with pytest.raises(
            ck.WorkdirBusy, match=f"pid {os.getpid()} on host {socket.gethostname()}"
        ):
            train_and_evaluate(smoke(), workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # nothing else written


def test_a_crash_in_the_final_evaluation_is_recorded_as_failed(tmp_path, monkeypatch):
    config = smoke(**{"train.num_steps": 2, "train.sample_tokens": 0})
    real_call = Evaluator.__call__

    def crash_on_whole_splits(self, params, tokens, max_windows=0, **kwargs):
        if not max_windows:
            raise RuntimeError("evaluation blew up")
        return real_call(self, params, tokens, max_windows, **kwargs)

    monkeypatch.setattr(Evaluator, "__call__", crash_on_whole_splits)
    with pytest.raises(RuntimeError, match="evaluation blew up"):
        train_and_evaluate(config, tmp_path)
    status = monitor.read_status(tmp_path)
    assert status["state"] == "failed" and status["step"] == 2
    assert status["error"] == "RuntimeError: evaluation blew up"
    assert ck.list_steps(tmp_path) == [2]  # the last checkpoint was saved before


def test_ctrl_c_twice_stops_at_once_and_says_interrupted(tmp_path):
    class CtrlCTwice(hooks_lib.Hook):
        def after_step(self, progress):
            if progress.step == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the run will stop after this step...
                for _ in range(1000):  # (the handler runs between bytecodes)
                    pass
                os.kill(os.getpid(), signal.SIGINT)  # ...but a second Ctrl-C stops it now
                for _ in range(1000):
                    pass

    config = smoke(**{"train.num_steps": 50, "train.checkpoint_every": 1})
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, tmp_path, hooks=[CtrlCTwice()])
    status = monitor.read_status(tmp_path)
    assert status["state"] == "interrupted" and status["step"] == 3
    assert "Ctrl-C twice" in status["error"]
    # Step 3 was not saved: the run stopped at once, not waiting even for the save of step 2
    # (the finished ones are intact).
    steps = ck.list_steps(tmp_path)
    assert steps in ([1], [1, 2])
    assert int(ck.load_state(tmp_path, steps[-1])[0]["step"]) == steps[-1]


@pytest.mark.parametrize(
    "status",
    [
        '{"state": "runn',  # half written
        "[1, 2]",
        '{"state": "finished", "final": [1, 2]}',
        "dead",  # says running, but its process is gone (SIGKILL)
    ],
)
def test_a_status_that_cannot_be_believed_is_said_so_and_the_checkpoints_decide(
    run, tmp_path, capsys, status
):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    if status == "dead":
        gone = subprocess.Popen(["true"])
        gone.wait()
        status = json.dumps(
            {"state": "running", "step": 2, "pid": gone.pid, "host": socket.gethostname()}
        )
    (workdir / "status.json").write_text(status)
    config = ck.run_config(ck.read_meta(workdir)["config"])
    final = train_and_evaluate(config, workdir)  # the checkpoint of the last step: evaluate it
    out = capsys.readouterr().out
    if "running" in status:
        assert f"The previous run in {workdir} (pid {gone.pid}" in out
        assert "ended without a word at step 2" in out
        events = monitor.read_status(workdir)["events"]
        assert [(e["step"], e["event"]) for e in events] == [(3, "crash")]
    else:
        assert f"Ignoring {workdir / 'status.json'}" in out
    assert final["step"] == 3 and math.isfinite(final["test_loss"])
    assert monitor.read_status(workdir)["state"] == "finished"


def test_the_end_of_run_sample_may_be_longer_than_a_transformers_window(tmp_path):
    # "The " and 40 tokens do not fit in 32 learned positions: the sample crops its context.
    config = smoke(
        "transformer",
        **{"model.max_len": 32, "train.num_steps": 2, "train.sample_tokens": 40},
    )
    final = train_and_evaluate(config, tmp_path)
    assert final["step"] == 2
    assert final["sample"].startswith("The ") and len(final["sample"]) == len("The ") + 40
