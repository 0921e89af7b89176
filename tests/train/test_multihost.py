"""Two processes with two CPU devices each, started by the command line with --coordinator,
train like one with four; a SIGTERM to one of them stops both at the same step, and the two
resume to the same result."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from jaxlm import checkpoints
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import ROOT, smoke, train_cli, train_losses

OVERRIDES = {
    "train.num_steps": 60,
    "train.log_every": 1,
    "train.eval_every": 1000,
    "train.checkpoint_every": 1000,
    "train.sample_tokens": 0,
    "model.dropout": 0.0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, logs) -> list[subprocess.Popen]:
    """The two processes of one run, each with two fake CPU devices, joined on 127.0.0.1."""
    port = _free_port()
    env = {
        **os.environ,
        "JAX_NUM_CPU_DEVICES": "2",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    cmd = train_cli(f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
    procs = []
    for i, log in enumerate(logs):  # files, not pipes: a full pipe would stall a collective
        with open(log, "w") as f:
            flags = [f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
            procs.append(
                subprocess.Popen(cmd + flags, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            )
    return procs


def _step(workdir) -> int:
    try:
        return json.loads((workdir / "status.json").read_text()).get("step") or 0
    except (OSError, ValueError):
        return 0


@pytest.mark.heavy
def test_two_processes_train_like_one_stop_together_and_resume(tmp_path):
    single = train_and_evaluate(smoke(**OVERRIDES, **{"parallel.data": 4}), tmp_path / "single")

    workdir = tmp_path / "multi"
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = _start(workdir, logs)
    try:
        deadline = time.monotonic() + 300
        while _step(workdir) < 5:  # training: process 0 writes the status
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)  # the one that does not write
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            p.kill()
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [143, 143], outputs[0][-3000:] + outputs[1][-3000:]
    assert "Joined a run of several processes through 127.0.0.1" in outputs[0]
    status = json.loads((workdir / "status.json").read_text())
    stopped = status["step"]
    assert status["state"] == "preempted" and 5 <= stopped < OVERRIDES["train.num_steps"]
    assert checkpoints.list_steps(workdir) == [stopped]  # saved together, once
    assert int(checkpoints.load_state(workdir, stopped)[0]["step"]) == stopped

    procs = _start(workdir, logs)
    for p in procs:
        p.wait(timeout=300)
    outputs = [log.read_text() for log in logs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'}/{stopped}" in outputs[0]
    assert "Final validation loss" in outputs[0] and "Final validation loss" not in outputs[1]
    final = json.loads((workdir / "status.json").read_text())["final"]
    np.testing.assert_allclose(final["validation_loss"], single["validation_loss"], rtol=1e-5)
    multi, one = train_losses(workdir), train_losses(tmp_path / "single")
    assert [s for s, _ in multi] == [s for s, _ in one] == list(range(1, 61))
    np.testing.assert_allclose([v for _, v in multi], [v for _, v in one], rtol=1e-5)
    multi_params = checkpoints.load_state(workdir)[0]["params"]
    single_params = checkpoints.load_state(tmp_path / "single")[0]["params"]
    np.testing.assert_allclose(
        multi_params["head"]["kernel"], single_params["head"]["kernel"], rtol=1e-4, atol=1e-6
    )
