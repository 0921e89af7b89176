"""Health checks with injected faults: a spike under "warn" and "skip" (rollback: the
SIGKILL-resume test in test_loop.py), a NaN tolerated once, a stall seen by the watchdog and
alerted, saturated LSTM gates against a hand computation, and the bad inputs around them."""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import monitor
from jaxlm.config import validate
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.models import RecurrentLM
from jaxlm.train import health
from jaxlm.train import hooks as hooks_lib
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import smoke

# A short run: logs every 4 steps, nothing evaluated or saved before the end.
SHORT = {
    "train.num_steps": 8,
    "train.log_every": 4,
    "train.eval_every": 100,
    "train.checkpoint_every": 100,
    "train.sample_tokens": 0,
    "train.eval_steps": 2,
    "data.eval_batch_size": 64,
    "optimizer.schedule": "constant",
    "monitor.spike_factor": 3.0,
    "monitor.spike_warmup": 3,
}


def _rows(workdir, split):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["split"] == split]


def _events(workdir):
    return [(r["step"], r["event"]) for r in _rows(workdir, "event")]


class _Params(hooks_lib.Hook):
    """Keeps a copy of the parameters after each step."""

    def __init__(self):
        self.at = {}

    def after_step(self, progress):
        self.at[progress.step] = jax.device_get(progress.state.params)


def _same(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_a_skipped_spike_a_warned_gradient_explosion_and_tolerated_nans(tmp_path, capsys):
    # One run, three checks: the loss spike at step 6 is skipped (policy skip), the gradient
    # explosion it causes is only warned of (policy warn), the NaNs at 9 and 10 are events
    # (once) whose updates optax.apply_if_finite skips.
    config = smoke(
        **{
            **SHORT,
            "train.num_steps": 12,
            "monitor.inject": "spike@6,nan@9,nan@10",
            "monitor.spike_policy": "skip",
            "monitor.grad_factor": 10.0,
            "monitor.grad_policy": "warn",
            "monitor.nonfinite": "warn",
            "optimizer.skip_nonfinite": True,
        }
    )
    params = _Params()
    final = train_and_evaluate(config, tmp_path, hooks=[params])
    assert np.isfinite(final["validation_loss"])
    assert _same(params.at[5], params.at[6])  # the spike's update was not applied
    assert not _same(params.at[6], params.at[7])  # and step 7 trained again
    assert _same(params.at[8], params.at[10]) and not _same(params.at[10], params.at[11])
    assert _events(tmp_path) == [(6, "loss_spike"), (6, "grad_spike"), (9, "nonfinite_loss")]
    spike, grad, _ = _rows(tmp_path, "event")
    assert spike["policy"] == "skip" and spike["value"] > 100 and grad["policy"] == "warn"
    status = monitor.read_status(tmp_path)
    assert [(e["step"], e["event"]) for e in status["events"]] == _events(tmp_path)
    out = capsys.readouterr().out
    assert out.count("[event] step 6: loss_spike: loss") == 1  # once, as each event
    assert "(update skipped)" in out and "(update applied)" in out
    assert out.count("nonfinite_loss") == 1
    train = {r["step"]: r for r in _rows(tmp_path, "train")}
    assert train[8]["skipped_spikes"] == 1
    assert train[8]["loss"] > 20  # the mean of 5..8 holds the spike (x100)
    assert np.isnan(train[12]["loss"])  # and that of 9..12 the NaNs
    assert "loss_spike" not in train[8]  # a step's flag is not a log line's


def test_a_stall_is_seen_recorded_and_alerted_and_a_failing_alert_is_not_fatal(
    tmp_path, monkeypatch, capsys
):
    alerts = tmp_path / "alerts.txt"
    command = f'echo "$JAXLM_EVENT $JAXLM_STEP $JAXLM_WORKDIR" >> {alerts}; exit 3'
    config = smoke(
        **{
            **SHORT,
            "train.num_steps": 4,
            "monitor.spike_factor": 0.0,
            "monitor.inject": "sleep@2:2.0",
            "monitor.stall_seconds": 0.75,
            "monitor.gate_every": 2,
            "monitor.gate_saturation": 0.49,  # sigmoid(z) outside (0.49, 0.51): many gates
            "monitor.gate_warn_fraction": 0.0,  # any saturated gate: warned of, once
            "monitor.on_event": "command",
            "monitor.command": command,
        },
    )
    states = []
    real_status = monitor.Monitor.status
    monkeypatch.setattr(
        monitor.Monitor,
        "status",
        lambda self, state, step, **kw: (
            states.append(state) or real_status(self, state, step, **kw)
        ),
    )
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    events = _events(workdir)
    assert (2, "stall") in events and (3, "stall_over") in events
    assert "stalled" in states and monitor.read_status(workdir)["stalled"] is False
    assert [s for s, _ in events if _ == "saturated_gates"] == [2]
    gates = _rows(workdir, "gates")
    assert [r["step"] for r in gates] == [2, 4]
    assert {"layers_0", "layers_1/forget"} <= set(gates[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "stall_over" not in (
        alerts.read_text() if alerts.exists() else ""
    ):
        time.sleep(0.1)
    lines = alerts.read_text().splitlines()
    assert f"stall 2 {workdir}" in lines and f"stall_over 3 {workdir}" in lines
    time.sleep(0.5)  # the reaper threads log the failed status
    assert "Alert command for event stall failed with status 3" in capsys.readouterr().out


def _lstm_by_hand(params, tokens, sizes):
    """Every gate pre-activation of a stacked LSTM, computed step by step in numpy."""
    p = jax.tree.map(np.asarray, params)
    x = p["embed"]["embedding"][tokens]  # [B, T, E]
    out = []
    for i, size in enumerate(sizes):
        w_ih, b = p[f"layers_{i}"]["ih"]["kernel"], p[f"layers_{i}"]["ih"]["bias"]
        w_hh = p[f"layers_{i}"]["hh"]["kernel"]
        h = np.zeros((tokens.shape[0], size), np.float32)
        c = np.zeros_like(h)
        zs, hs = [], []
        for t in range(tokens.shape[1]):
            z = x[:, t] @ w_ih + b + h @ w_hh
            zi, zf, zg, zo = np.split(z, 4, axis=-1)
            c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zg)
            h = _sigmoid(zo) * np.tanh(c)
            zs.append(z)
            hs.append(h)
        out.append(np.stack(zs, 1))
        x = np.stack(hs, 1)
    return out


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_saturated_gate_shares_match_a_hand_computation():
    sizes, eps = (6, 5), 0.01
    model = RecurrentLM(vocab_size=11, embed_dim=8, hidden_sizes=sizes, init_scale=2.0)
    tokens = np.random.default_rng(0).integers(0, 11, (3, 9)).astype(np.int32)
    params = jax.jit(model.init)(jax.random.key(1), tokens, model.initial_carry(3))["params"]
    shares = jax.jit(lambda p, t: health.gate_saturation(model, p, t, eps))(params, tokens)
    edge = {"input": np.log(99), "forget": np.log(99), "cell": np.arctanh(0.99)}
    edge["output"] = edge["input"]
    some_but_not_all = 0
    for i, z in enumerate(_lstm_by_hand(params, tokens, sizes)):
        per_gate = []
        for gate, zg in zip(health.GATE_NAMES, np.split(z, 4, axis=-1), strict=True):
            # sigmoid(z) > 0.99 or < 0.01 exactly when |z| > log(99); |tanh(z)| > 0.99 likewise.
            s = np.asarray(_sigmoid(zg) if gate != "cell" else np.abs(np.tanh(zg)))
            hand = np.mean((s > 1 - eps) | ((s < eps) if gate != "cell" else False))
            assert np.mean(np.abs(zg) > edge[gate]) == pytest.approx(hand)
            assert float(shares[f"layers_{i}/{gate}"]) == pytest.approx(hand, abs=1e-6)
            per_gate.append(hand)
            some_but_not_all += 0 < hand < 1
        assert float(shares[f"layers_{i}"]) == pytest.approx(np.mean(per_gate), abs=1e-6)
    assert some_but_not_all >= 4  # the numbers are not all 0 or 1


def test_health_fields_are_checked_and_old_checkpoints_resume_without_them(tmp_path):
    with pytest.raises(ConfigError, match=r"config.monitor.gate_every=5: saturated gates .* LSTM"):
        validate(smoke("transformer", **{"monitor.gate_every": 5}))
    # A checkpoint from before the monitor section resumes; switching the spike guard on
    # changes the optimizer state's structure, and is refused by name.
    saved = ck.config_json(smoke())
    del saved["monitor"]
    assert ck.incompatible_fields(saved, smoke(**{"monitor.stall_seconds": 5.0})) == []
    assert ck.incompatible_fields(saved, smoke(**{"monitor.spike_factor": 3.0})) == [
        "monitor.spike_factor: '<absent>' -> 3.0"
    ]
    (tmp_path / health.SKIPS_FILE).write_text('{"steps": [3, "x"]}')
    with pytest.raises(JaxlmError, match=rf"{health.SKIPS_FILE}: expected"):
        health.read_skips(tmp_path)
