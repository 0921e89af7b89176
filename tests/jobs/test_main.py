"""``python -m jaxlm.jobs``: submit (a config with overrides, a command after --), run, status,
logs, cancel, inventory; bad input as one line; a config job through jaxlm.train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def jobs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "jaxlm.jobs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_submit_status_cancel_and_logs(tmp_path):
    q = f"--queue={tmp_path / 'q'}"
    config = jobs(
        "submit",
        q,
        "--config=lstm:smoke",
        f"--workdir={tmp_path / 'a'}",
        "--config.train.num_steps=7",
        "--config.model.hidden_sizes",
        "(8,8)",
        "--memory=2GiB",
        "--name=tiny",
    )
    command = jobs("submit", q, "--seconds=5", "--", sys.executable, "-c", "print('hi')")
    assert (config.stdout, command.stdout) == ("1\n", "2\n")
    rows = json.loads(jobs("status", q, "--json").stdout)
    first = rows[0]["job"]
    assert first["overrides"] == {"train.num_steps": "7", "model.hidden_sizes": "(8,8)"}
    assert first["memory_bytes"] == 2 * 2**30 and first["workdir"] == str(tmp_path / "a")
    assert rows[1]["job"]["command"][-1] == "print('hi')" and rows[1]["job"]["seconds"] == 5
    table = jobs("status", q).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "TRY"] and "tiny" in table[1]
    assert table[-1].endswith("2 queued; no balancer")
    assert "job 1: cancel requested (queued)" in jobs("cancel", q, "1").stdout
    jobs("run", q, "--inventory=cpu", "--until_done", "--poll=0.05")
    assert jobs("logs", q, "2").stdout.splitlines()[-1] == "hi"
    states = [r["state"] for r in json.loads(jobs("status", q, "--json").stdout)]
    assert states == ["cancelled", "finished"]
    assert "cpu: cores" in jobs("inventory", "--inventory=cpu").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--config=lstm:smoke"], "error: job.workdir: a config job"),
        (["submit", "--memory=lots", "--", "true"], "error: --memory: expected a size"),
        (["submit", "--workdir=w", "--lr=3"], "error: submit: unrecognized argument '--lr=3'"),
        (["status", "7"], "error: job 7: no such job"),
        (["run", "--inventory=nope.json"], "error: inventory: nope.json is no file"),
        (["cancel"], "error: cancel: name the jobs, or --all"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    done = jobs(args[0], f"--queue={tmp_path / 'q'}", *args[1:], check=False)
    assert done.returncode == 2 and done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert done.stderr.startswith(message), done.stderr


def test_a_config_job_runs_jaxlm_train_and_its_one_line_error_is_recorded(tmp_path):
    # A real python -m jaxlm.train through the balancer (the benchmark trains; this stops at
    # the config check): its command, the balancer's jaxlm, exit 2 and its line in the record.
    q, workdir = f"--queue={tmp_path / 'q'}", tmp_path / "run"
    jobs("submit", q, "--config=lstm:smoke", f"--workdir={workdir}", "--config.train.num_steps=0")
    assert (
        jobs("run", q, "--inventory=cpu", "--until_done", "--poll=0.1", check=False).returncode == 1
    )
    (row,) = json.loads(jobs("status", q, "--json").stdout)
    assert row["state"] == "failed" and row["exit_code"] == 2
    assert row["message"].splitlines()[0] == (
        "exit 2: error: config.train.num_steps: expected a positive integer, got 0"
    )
    assert not workdir.exists()
