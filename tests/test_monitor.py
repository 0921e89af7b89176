"""jaxlm.monitor: metric lines, metrics.jsonl, status.json (process 0 writes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from jaxlm.monitor import Monitor, format_duration, read_status, run_state


def test_lines_rows_and_status(tmp_path, capsys):
    mon = Monitor(tmp_path, total_steps=100, tensorboard=False)
    mon.write(10, {"loss": 2.5, "tokens_per_s": 12345.6}, "train", eta=90.0)
    mon.write(10, {"loss": 2.4}, "eval")
    assert capsys.readouterr().out.splitlines() == [
        "[train] step 10/100 | loss 2.5 | tokens_per_s 12346 | ETA 1:30",
        "[eval] step 10/100 | loss 2.4",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [
        (10, "train", 2.5),
        (10, "eval", 2.4),
    ]
    status = read_status(tmp_path)
    assert status["state"] == "running" and status["eta_seconds"] == 90.0  # the last ETA stands
    assert status["train_loss"] == 2.5 and status["eval_loss"] == 2.4
    mon.status("finished", 100, eta=0.0, final={"test_loss": 2.0})
    assert read_status(tmp_path)["final"] == {"test_loss": 2.0}
    mon.close()
    assert read_status(tmp_path / "nothing") is None


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["0:05", "1:05", "1:02:05"]
    assert format_duration(float("nan")) == "?"


def test_heartbeat_refreshes_the_status_while_open_and_stops_at_close(tmp_path):
    mon = Monitor(tmp_path, total_steps=10, tensorboard=False, heartbeat=0.02)
    time.sleep(0.1)
    assert read_status(tmp_path) is None  # nothing of its own to say yet: the last run's stays
    mon.status("running", 3)
    first = read_status(tmp_path)
    assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    deadline = time.monotonic() + 10
    while read_status(tmp_path)["heartbeat"] == first["heartbeat"]:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.02)
    beat = read_status(tmp_path)
    assert beat["updated"] == first["updated"] and beat["step"] == 3  # only the heartbeat moved
    assert run_state(beat) == "running"
    mon.close()
    last = read_status(tmp_path)["heartbeat"]
    time.sleep(0.1)
    assert read_status(tmp_path)["heartbeat"] == last
    # Judged later, a status whose heartbeat stopped belongs to a crashed run.
    assert run_state(read_status(tmp_path), now=last + 3600) == "crashed"


def test_a_running_status_of_a_process_that_is_gone_is_crashed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    status = {"state": "running", "pid": gone.pid, "host": socket.gethostname()}
    status["heartbeat"] = time.time()
    assert run_state(status) == "crashed"
    assert run_state({**status, "pid": os.getpid()}) == "running"
    assert run_state({**status, "state": "failed"}) == "failed"


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"state": "runn', "not JSON"),
        ("[1, 2]", 'expected a JSON object with a "state", found [1, 2]'),
        ('{"step": 3}', 'expected a JSON object with a "state"'),
    ],
)
def test_an_unreadable_status_is_unknown_and_said_so(tmp_path, text, why):
    (tmp_path / "status.json").write_text(text)
    said = []
    assert read_status(tmp_path, log=said.append) is None
    assert said and str(tmp_path / "status.json") in said[0] and why in said[0]
    with pytest.warns(UserWarning, match="the run's state is unknown"):
        assert read_status(tmp_path) is None


def test_resuming_keeps_one_row_per_step(tmp_path):
    mon = Monitor(tmp_path, total_steps=30, tensorboard=False)
    for step in (10, 20, 30):
        mon.write(step, {"loss": step}, "train", echo=False)
        mon.write(step, {"loss": step}, "eval", echo=False)
    mon.write(30, {"loss": 1.0}, "validation", echo=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "split": "tr')  # the write a kill cut short
    said = []
    assert mon.keep_metrics_until(20, log=said.append) == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [
        (10, "train"),
        (10, "eval"),
        (20, "train"),  # written before checkpoint 20, so not written again
        (20, "eval"),
    ]
    assert "Dropped 4 rows" in said[0]
    assert mon.keep_metrics_until(20) == 0  # nothing more to drop
    assert mon.keep_metrics_until(0) == 4  # a run restarted from scratch writes them all again
    mon.close()
