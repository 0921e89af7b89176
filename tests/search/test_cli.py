"""``python -m jaxlm.search`` end to end: a 3x3 grid on two workers, a search killed with
SIGKILL and run again, bad input refused before any trial with nothing in the study lost."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from jaxlm.search import results
from jaxlm.search.__main__ import main
from tests.helpers import ROOT

TINY = [  # a trial in a second or two: the cost is the process and its compilation
    "--config.train.num_steps=4",
    "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_steps=1",
    "--config.train.log_every=2",
    "--config.train.sample_tokens=0",
]


def search_cli(study: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxlm.search",
        f"--config={ROOT}/configs/lstm.py:smoke",
        f"--study={study}",
        *args,
    ]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's jaxlm, from any folder


def trials_of(study: Path) -> list[optuna.trial.FrozenTrial]:
    return results.load_study(study).get_trials(deepcopy=False)


@pytest.mark.slow
def test_grid_on_two_workers_runs_each_combination_once(tmp_path):
    study = tmp_path / "grid"
    space = f"--space={ROOT}/configs/search/lstm.py:grid"
    cmd = search_cli(study, space, "--sampler=grid", "--workers=2", "--inventory=cpu", *TINY)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = trials_of(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 9
    combos = [(t.params["optimizer.learning_rate"], t.params["model.dropout"]) for t in trials]
    assert sorted(combos) == sorted(itertools.product([1e-3, 3e-3, 1e-2], [0.0, 0.1, 0.2]))
    for t in trials:  # each an ordinary run folder, finished, with its config
        folder = study / "trials" / str(t.number)
        assert '"state": "finished"' in (folder / "status.json").read_text()
        assert (folder / "config.json").exists() and (folder / "checkpoints").is_dir()
    jobs = (study / "jobs" / "journal.jsonl").read_text()
    assert jobs.count('"event":"submit"') == 9  # through the balancer, each trial once
    best = results.load_study(study).best_trial
    config = __import__("jaxlm.config", fromlist=["load_config"]).load_config(
        str(study / "best_config.py")
    )
    assert config.optimizer.learning_rate == best.params["optimizer.learning_rate"]
    assert (study / "plots" / "optimization_history.png").stat().st_size > 1000


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the search ended before it could be killed"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# Slow (25 s): a dead trial is told by test_trial.py::test_trial_liveness and a killed run's exact
# resume by tests/train/test_loop.py; this runs both through the command line.
@pytest.mark.slow
def test_sigkill_mid_trial_then_same_command_finishes_it(tmp_path):
    study = tmp_path / "crash"
    cmd = search_cli(
        study,
        f"--space={ROOT}/configs/search/lstm.py:rates",
        "--sampler=random",
        "--trials=2",
        "--config.train.num_steps=300",  # a few seconds: the kill lands after the first save
        "--config.train.checkpoint_every=25",
        "--config.train.eval_every=25",
        "--config.train.eval_steps=2",
        "--config.train.log_every=25",
        "--config.train.sample_tokens=0",
        "--config.data.eval_batch_size=64",
    )
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=ENV)
    ckpts = study / "trials" / "1" / "checkpoints"
    try:
        _wait_for(
            lambda: ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()), 600, proc
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = trials_of(study)
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    after = trials_of(study)
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE"]  # no third trial
    assert after[0].values == before[0].values  # the finished trial is kept as it was
    assert after[1].params == before[1].params  # the same trial, the same parameters
    assert after[1].user_attrs["attempts"] == 2
    assert "was left running by a process that died: resuming it" in out.stdout
    assert f"Resumed from {study / 'trials' / '1' / 'checkpoints'}" in out.stdout
    assert after[1].user_attrs["steps"] == 300


def test_bad_input_is_refused_before_any_trial(tmp_path, capsys):
    study = tmp_path / "s"
    args = [f"--config={ROOT}/configs/lstm.py:smoke", f"--study={study}"]
    assert main([*args, "--space.model.dropuot=uniform:0:0.5"]) == 2
    assert "unknown config field model.dropuot" in capsys.readouterr().err
    assert not study.exists()  # nothing was written
    assert main([*args, "--space.model.dropout=uniform:0.5:0.1"]) == 2
    assert "expected low < high" in capsys.readouterr().err
    assert main([*args, "--space.model.dropout=uniform:0:1.0"]) == 2
    assert (
        "model.dropout = 1.0 (uniform:0.0:1.0) is refused by the config" in capsys.readouterr().err
    )
    empty = tmp_path / "empty.py"
    empty.write_text("def get_space(arg=None):\n    return {}\n")
    assert main([*args, f"--space={empty}"]) == 2
    assert "the search space is empty" in capsys.readouterr().err
    assert not study.exists()


def test_status_of_no_study(tmp_path, capsys):
    assert main([f"--study={tmp_path}", "status"]) == 2
    assert "no study.json; is this a study folder?" in capsys.readouterr().err
