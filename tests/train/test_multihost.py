"""Two processes with two CPU devices each, joined by jax.distributed, train like one with four."""

import os
import socket
import subprocess
import sys

import numpy as np

from jaxlm import checkpoints
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import ROOT, smoke, train_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(tmp_path):
    config = smoke(
        **{
            "train.num_steps": 20,
            "train.log_every": 5,
            "train.eval_every": 20,
            "train.checkpoint_every": 10,
            "model.dropout": 0.0,
            "parallel.data": 4,
        }
    )
    single = train_and_evaluate(config, tmp_path / "single")  # also prepares the corpus

    port, workdir = str(_free_port()), tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):  # files, not pipes: a full pipe would stall a collective
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "tests/train/multihost_worker.py"),
                        str(i),
                        port,
                        str(workdir),
                        str(ROOT / "configs/lstm.py"),
                    ],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                )
            )
    for p in procs:
        p.wait(timeout=300)
    outputs = [log.read_text() for log in logs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    results = [
        line.split() for out in outputs for line in out.splitlines() if line.startswith("RESULT")
    ]
    assert sorted(r[1] for r in results) == ["0", "1"]
    assert all(r[2:4] == ["2", "4"] for r in results)  # 2 processes, 4 global devices
    assert "Final validation loss" in outputs[0] and "Final validation loss" not in outputs[1]
    np.testing.assert_allclose(float(results[0][4]), single["validation_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        [v for _, v in train_losses(workdir)],
        [v for _, v in train_losses(tmp_path / "single")],
        rtol=1e-5,
    )
    multi_params = checkpoints.load_state(workdir)[0]["params"]
    single_params = checkpoints.load_state(tmp_path / "single")[0]["params"]
    np.testing.assert_allclose(
        multi_params["head"]["kernel"], single_params["head"]["kernel"], rtol=1e-4, atol=1e-6
    )
