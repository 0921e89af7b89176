"""Telling a dead RUNNING trial from a live one, and the objectives read from a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxlm.errors import SearchError
from jaxlm.search import study as study_lib
from jaxlm.search.trial import objective_values, trial_liveness, write_trial_file


def write_status(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps(fields))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # exited and reaped: no such process now


def test_trial_liveness(tmp_path):
    host, now = socket.gethostname(), time.time()
    folder = study_lib.trial_dir(tmp_path, 0)
    # asked by another live process on this host, not started yet: alive
    write_trial_file(tmp_path, 0, {"model.dropout": 0.1})
    data = json.loads((folder / "trial.json").read_text())
    data["pid"] = os.getppid()
    (folder / "trial.json").write_text(json.dumps(data))
    assert trial_liveness(tmp_path, 0) == "alive"
    # asked by a process that is gone, never started: dead
    data["pid"] = dead_pid()
    (folder / "trial.json").write_text(json.dumps(data))
    assert trial_liveness(tmp_path, 0) == "dead"
    # running, its writer another live process: alive
    write_status(folder, state="running", pid=os.getppid(), host=host, heartbeat=now, updated=now)
    assert trial_liveness(tmp_path, 0) == "alive"
    # finished, its writer still alive (about to tell Optuna, in a search sharing the study)
    write_status(folder, state="finished", final={}, pid=os.getppid(), host=host, updated=now + 1)
    assert trial_liveness(tmp_path, 0) == "alive"
    # its run was in this process, which asks: it is not running it any more
    write_status(folder, state="running", pid=os.getpid(), host=host, heartbeat=now, updated=now)
    assert trial_liveness(tmp_path, 0) == "dead"
    # running, its writer gone (SIGKILL): dead
    write_status(folder, state="running", pid=dead_pid(), host=host, heartbeat=now, updated=now)
    assert trial_liveness(tmp_path, 0) == "dead"
    # on another host, no heartbeat for a minute: dead
    old = now - 60
    write_status(folder, state="running", pid=1, host="elsewhere", heartbeat=old, updated=old)
    assert trial_liveness(tmp_path, 0) == "dead"
    # preempted (SIGTERM, checkpointed) after it was asked: dead, to be resumed
    write_status(folder, state="preempted", pid=dead_pid(), host=host, updated=now + 1)
    assert trial_liveness(tmp_path, 0) == "dead"
    # asked by this very process, which is not running it: dead
    write_trial_file(tmp_path, 1, {})
    assert trial_liveness(tmp_path, 1) == "dead"


def test_objective_values():
    objectives = study_lib.parse_objectives("validation_loss,tokens_per_s,params")
    final = {"step": 10, "validation_loss": 1.25}
    status = {"state": "finished", "train_tokens_per_s": 5000.0, "pid": 3}
    assert objective_values(objectives, final, status, 1234) == [1.25, 5000.0, 1234.0]
    with pytest.raises(SearchError, match="objective eval_loss: the run logged no such metric"):
        objective_values(study_lib.parse_objectives("eval_loss"), final, status, 1)
