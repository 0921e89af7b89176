"""jaxlm.monitor: metric lines, metrics.jsonl, status.json (process 0 writes)."""

from __future__ import annotations

import json

from jaxlm.monitor import Monitor, format_duration, read_status


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
