"""python -m jaxlm.runs: the runs table on runs made for real (finished, running, SIGKILLed,
failed, preempted), stalls, the job journal's states, compare, plot, report, --json, the
terminal's width and damaged files."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jaxlm.runs.__main__ import main
from jaxlm.train.hooks import Hook
from jaxlm.train.loop import Preempted, train_and_evaluate
from tests.helpers import ROOT, smoke

# A live run as far as status.json goes: jaxlm.monitor.Monitor with a fast heartbeat, a
# training row written, then nothing (the test kills it).
LIVE = """
import sys, time
from jaxlm.monitor import Monitor
mon = Monitor(sys.argv[1], total_steps=100, tensorboard=False, heartbeat=0.2)
mon.write(5, {"loss": 3.25, "tokens_per_s": 1000.0}, "train", eta=60.0, echo=False)
print("ready", flush=True)
time.sleep(600)
"""


class _Fault(Hook):
    """Raises at step 1 (a bug in the middle of a run)."""

    def after_step(self, progress) -> None:
        if progress.step == 1:
            raise RuntimeError("injected fault at step 1")


class _Sigterm(Hook):
    """Sends this process a SIGTERM at step 1 (a scheduler preempting the run)."""

    def after_step(self, progress) -> None:
        if progress.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def _config(**overrides):
    """Shaped like tests/conftest.py's ``run``: in the suite its compiled steps are cached."""
    return smoke(
        **{
            "train.num_steps": 3,
            "train.log_every": 1,
            "train.eval_every": 100,
            "train.checkpoint_every": 100,
            "train.sample_tokens": 0,
            "data.eval_batch_size": 64,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """A folder with five runs: finished, running, crashed (SIGKILLed), failed, preempted."""
    root = tmp_path_factory.mktemp("five")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", LIVE, str(root / name)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for name in ("running", "crashed")
    }
    try:
        # The finished run writes its report and sample (on for it; smoke runs leave it off).
        train_and_evaluate(
            _config(**{"monitor.report": True, "train.sample_tokens": 40}), root / "finished"
        )
        with pytest.raises(RuntimeError, match="injected fault"):
            train_and_evaluate(_config(), root / "failed", hooks=[_Fault()])
        with pytest.raises(Preempted):
            train_and_evaluate(_config(), root / "preempted", hooks=[_Sigterm()])
        for child in children.values():
            assert child.stdout.readline().strip() == "ready"
        children["crashed"].send_signal(signal.SIGKILL)
        children["crashed"].wait()
        yield root
    finally:
        for child in children.values():
            child.kill()
            child.wait()


def _json(capsys, argv) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_tells_the_five_states_apart(five, capsys):
    rows = {r["name"]: r for r in _json(capsys, ["list", str(five)])}
    assert {n: r["state"] for n, r in rows.items()} == {
        "crashed": "crashed",
        "failed": "failed",
        "finished": "finished",
        "preempted": "preempted",
        "running": "running",
    }
    assert rows["finished"]["step"] == 3 and rows["finished"]["total_steps"] == 3
    assert rows["preempted"]["step"] == 2  # the SIGTERM at step 1 is acted on at step 2
    assert "injected fault at step 1" in rows["failed"]["error"]
    assert rows["running"]["train_loss"] == 3.25 and rows["running"]["eta_seconds"] == 60.0
    assert rows["running"]["heartbeat_age_seconds"] < 30
    assert rows["crashed"]["eta_seconds"] is None  # a dead run has no ETA
    assert rows["finished"]["best_validation_loss"] == pytest.approx(
        json.loads((five / "finished/status.json").read_text())["final"]["validation_loss"]
    )
    # The text table says the same, one line per run.
    assert main(["list", str(five)]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert states == {n: r["state"] for n, r in rows.items()}


def test_a_live_run_whose_step_does_not_move_is_stalled(five, capsys):
    time.sleep(0.6)  # the running child's step has not moved since it started
    rows = {r["name"]: r for r in _json(capsys, ["list", str(five), "--stall_after=0.5"])}
    assert rows["running"]["state"] == "stalled"
    assert rows["crashed"]["state"] == "crashed" and rows["finished"]["state"] == "finished"


def test_a_run_ends_with_its_report_and_sample(five):
    page = (five / "finished/report.html").read_text()
    sample = (five / "finished/sample.txt").read_text()
    final = json.loads((five / "finished/status.json").read_text())["final"]
    assert sample == final["sample"] and sample.startswith("The ")
    assert 'id="curves"' in page and "data:image/png;base64," in page
    assert not (five / "failed/report.html").exists()  # smoke runs leave the report off


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.pre = [], [], [], []
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and v]
        self._in_pre = tag == "pre"

    def handle_data(self, data):
        if self._in_pre:
            self.pre.append(data)

    def handle_endtag(self, tag):
        self._in_pre = False if tag == "pre" else self._in_pre


def _fabricate(folder: Path, *, seed: int, lr: float, losses: list[float], events=()) -> Path:
    """A finished run's files as the loop writes them (no training)."""
    folder.mkdir(parents=True)
    config = smoke().to_dict()
    config["seed"], config["optimizer"]["learning_rate"] = seed, lr
    (folder / "config.json").write_text(json.dumps(config, default=list))
    rows = [
        {
            "step": 10 * (i + 1),
            "split": "train",
            "loss": v,
            "lr": lr,
            "grad_norm": 1.0 + i,
            "tokens_per_s": 500.0 + i,
            "time": 1000.0 + i,
        }
        for i, v in enumerate(losses)
    ]
    rows.append({"step": 10 * len(losses), "split": "eval", "loss": losses[-1] + 0.5})
    rows.append({"step": 10 * len(losses), "split": "validation", "loss": losses[-1] + 0.4})
    rows += [{"step": step, "event": kind, "loss": 9.0} for step, kind in events]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {
        "step": 10 * len(losses),
        "validation_loss": losses[-1] + 0.4,
        "test_loss": losses[-1] + 0.3,
        "sample": "The <b>sample</b> & more",
    }
    status = {
        "state": "finished",
        "step": 10 * len(losses),
        "total_steps": 10 * len(losses),
        "final": final,
        "heartbeat": time.time(),
        "pid": 1,
        "host": "elsewhere",
        "events": [{"step": 20, "event": "grad_norm_explosion", "grad_norm": 99.0}],
    }
    (folder / "status.json").write_text(json.dumps(status))
    return folder


@pytest.fixture
def pair(tmp_path):
    a = _fabricate(tmp_path / "a", seed=0, lr=1e-3, losses=[3.0, 2.5, 2.0], events=[(20, "spike")])
    b = _fabricate(tmp_path / "b", seed=1, lr=2e-3, losses=[3.1, 2.4, 1.8])
    return a, b


def test_compare_shows_only_the_differences_and_the_finals(pair, capsys):
    data = _json(capsys, ["compare", *map(str, pair)])
    assert data["runs"] == ["a", "b"]
    assert data["config"] == {"optimizer.learning_rate": [1e-3, 2e-3], "seed": [0, 1]}
    assert data["final"]["validation_loss"] == pytest.approx([2.4, 2.2])
    assert data["final"]["best_validation_loss"] == pytest.approx([2.4, 2.2])
    assert data["final"]["tokens_per_s"] == [502.0, 502.0]
    assert main(["compare", *map(str, pair)]) == 0
    text = capsys.readouterr().out
    assert "optimizer.learning_rate" in text and "model.name" not in text  # the same in both


def test_plot_writes_a_png_and_names_the_known_metrics(pair, tmp_path, capsys):
    out = tmp_path / "plot.png"
    data = _json(capsys, ["plot", *map(str, pair), f"--out={out}"])
    assert data["metrics"] == [
        "train_loss",
        "validation_loss",
        "train_lr",
        "train_grad_norm",
        "train_tokens_per_s",
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = tmp_path / "one.png"
    data = _json(capsys, ["plot", str(pair[0]), "--metric=validation_loss", f"--out={one}"])
    assert data["metrics"] == ["validation_loss"] and one.stat().st_size < out.stat().st_size
    assert main(["plot", str(pair[0]), "--metric=valid_loss", f"--out={tmp_path}/x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown metric 'valid_loss'" in err
    assert "validation_loss" in err and "train_grad_norm" in err
    assert not (tmp_path / "x.png").exists()


def test_report_is_self_contained_with_every_section(pair, capsys):
    assert main(["report", str(pair[0])]) == 0
    text = (pair[0] / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.sections == ["curves", "throughput", "events", "final", "sample", "config"]
    assert len(page.images) == 2
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :])[:4] == b"\x89PNG"
    assert all(link.startswith("data:") for link in page.links)
    assert "http://" not in text and "https://" not in text
    assert "".join(page.pre) == "The <b>sample</b> & more"  # escaped, read back as written
    events = text[text.index('id="events"') : text.index('id="final"')]
    assert "spike" in events and "grad_norm_explosion" in events  # metrics row, status list
    assert "optimizer.learning_rate" in text and "0.001" in text


def test_the_table_fits_the_terminal(pair, monkeypatch, capsys):
    folder = pair[0].parent
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list", str(folder)]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert wide[0].split() == [
        "name",
        "state",
        "step",
        "train",
        "loss",
        "best",
        "val",
        "model",
        "tok/s",
        "ETA",
        "beat",
    ]
    for columns in (60, 30, 12):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["list", str(folder)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3 and max(map(len, lines)) <= max(columns, 20)
        assert lines[1].split()[1] == "finished"  # name and state are never dropped
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["compare", *map(str, pair)]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 60


def test_damaged_metrics_are_skipped_with_one_warning(pair, capsys):
    path = pair[0] / "metrics.jsonl"
    good = path.read_text()
    path.write_text(good + 'not json\n[1, 2]\n{"step": "x"}\n{"step": 40, "split": "tr')
    rows = _json(capsys, ["list", str(pair[0])])
    assert rows[0]["train_loss"] == 2.0 and rows[0]["state"] == "finished"
    capsys.readouterr()
    assert main(["show", str(pair[0])]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    assert "skipped 3 unreadable lines" in warning and "partial last line" in warning
    assert "metrics.jsonl" in warning and "train (step 30)" in captured.out
    assert (
        main(["report", str(pair[0])]) == 0 and main(["plot", str(pair[0]), "--out=/dev/null"]) == 0
    )


def test_bad_folders_are_one_line(tmp_path, capsys):
    assert main(["list", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing'}: no such folder\n"
    (tmp_path / "empty/sub").mkdir(parents=True)
    assert main(["list", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'empty'}: no runs in it") and err.count("\n") == 1
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_job_the_balancer_will_restart_shows_as_queued(pair, tmp_path, capsys):
    from jaxlm.jobs.queue import Job, Journal

    status = json.loads((pair[1] / "status.json").read_text())
    status.update(state="preempted", final=None)
    (pair[1] / "status.json").write_text(json.dumps(status))
    journal = Journal(tmp_path / "queue")
    job_id = journal.submit(Job(config="lstm:smoke", workdir=str(pair[1])))
    journal.append({"event": "start", "id": job_id, "attempt": 1, "placement": {}})
    journal.append(
        {
            "event": "exit",
            "id": job_id,
            "attempt": 1,
            "code": 143,
            "outcome": "preempted",
            "retry": {},
        }
    )
    rows = {r["name"]: r for r in _json(capsys, ["list", str(tmp_path)])}
    assert rows["b"]["state"] == "queued" and rows["b"]["job"]["id"] == job_id
    assert rows["a"]["state"] == "finished" and rows["a"]["job"] is None


def test_watch_once_clears_and_draws(pair, capsys):
    assert main(["watch", str(pair[0].parent), "--once"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\x1b[2J\x1b[H") and "finished" in out


def test_a_report_that_fails_never_fails_the_run(pair, monkeypatch, capsys):
    from jaxlm.runs import report
    from jaxlm.train import workdir

    config = smoke(**{"monitor.report": True})
    assert workdir.write_report(pair[0], config) == pair[0] / "report.html"
    assert "Report: " in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(report, "write_report", broken)
    assert workdir.write_report(pair[1], config) is None
    assert capsys.readouterr().out == (
        f"Could not write {pair[1] / 'report.html'}: OSError: No space left on device\n"
    )
    config.monitor.report = False
    assert not workdir.report_enabled(config)
    assert workdir.write_report(pair[1], config) is None and not capsys.readouterr().out
