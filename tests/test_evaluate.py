"""python -m jaxlm.evaluate: the command line prints a saved run's figures, from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_command_line_from_another_folder_with_a_relative_path(run, tmp_path):
    final = json.loads((run / "status.json").read_text())["final"]
    rel = os.path.relpath(run, tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxlm.evaluate",
            f"--workdir={rel}",
            "--checkpoint=3",
            "--split=test",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr
    line, per_text = out.stdout.strip().splitlines()[-2:]
    assert "test split" in line and f"loss {final['test_loss']:.4f} nats/char" in line
    assert f"perplexity {final['test_perplexity']:.2f}" in line
    assert f"loss {final['test_loss_per_word']:.4f} nats, perplexity" in per_text
    assert f"{final['test_bits_per_byte']:.4f} bits" in per_text
    bad = subprocess.run(
        [sys.executable, "-m", "jaxlm.evaluate", "--workdir=nowhere"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} does not exist"
    ]
