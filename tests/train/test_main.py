"""python -m jaxlm.train: a smoke run, SIGTERM at any moment, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxlm import checkpoints as ck
from jaxlm.jobs import measure
from tests.helpers import ROOT, train_cli, train_losses


@pytest.mark.heavy
def test_cli_smoke_run_trains_checkpoints_and_finishes(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cli(f"--workdir={workdir}")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tokens_per_s" in out.stdout and "ETA" in out.stdout
    assert "Final validation loss" in out.stdout and "bits/char" in out.stdout
    assert "Sample:\nThe " in out.stdout
    losses = train_losses(workdir)
    assert losses[-1][1] < losses[0][1] - 0.5  # from ~4.5 (uniform over 104) downwards
    status = json.loads((workdir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 60
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "30",
        "60",
    ]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "tokenizer.json").read_text())["kind"] == "char"
    # Evaluations during training (eval_steps windows) and the final whole-split ones are
    # written apart, so the curve does not seem to jump at the end.
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    splits = [(r["split"], r["step"]) for r in rows if r["split"] not in ("train", "checkpoint")]
    assert splits == [("eval", 30), ("validation", 60), ("test", 60)]
    saves = [r["step"] for r in rows if r["split"] == "checkpoint"]  # how long each one took
    assert saves == [30, 60]
    assert "Downloading" not in out.stdout  # TFDS's word: nothing is downloaded
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "already finished at step 60" in again.stdout


def _sigterm_caught(pid):
    """Whether the process has a SIGTERM handler installed (Linux: SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _status(workdir):
    try:
        return json.loads((workdir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.heavy
def test_cli_sigterm_checkpoints_exits_143_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cli(
        f"--workdir={workdir}",
        "--config.train.log_every=1",
        "--config.train.eval_every=100000",
        "--config.train.checkpoint_every=100000",
    )
    proc = subprocess.Popen(
        cmd + ["--config.train.num_steps=100000"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: _status(workdir).get("step", 0) > 0, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM at step" in err
    status = _status(workdir)
    steps = ck.manager(workdir, read_only=True).all_steps()
    assert status["state"] == "preempted" and list(steps) == [status["step"]]
    saved = status["step"]
    again = subprocess.run(
        cmd + [f"--config.train.num_steps={saved + 3}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'}/{saved}" in again.stdout
    assert _status(workdir)["state"] == "finished" and _status(workdir)["step"] == saved + 3


def test_cli_sigterm_during_startup_exits_143(tmp_path):
    # Sent as soon as the command line's handler is in place: during the imports, before the
    # trainer's own handler, the data, the model or the loop exist.
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    workdir = tmp_path / "run"
    cmd = train_cli(f"--workdir={workdir}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for(lambda: _sigterm_caught(proc.pid), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM before training" in err
    assert _status(workdir)["state"] == "preempted"
    assert ck.manager(workdir, read_only=True).all_steps() == []


def test_cli_sigterm_during_interpreter_teardown_keeps_the_exit_status():
    # After the run, Python gives SIGTERM its default action back and then tears down (after
    # JAX, that takes about half a second): a SIGTERM then must not turn a finished run's
    # status 0 into -15. The slow __del__ stands for that teardown.
    child = textwrap.dedent(
        """
        import sys, time
        from jaxlm.train import __main__ as cli

        class SlowTeardown:
            def __del__(self):
                print("tearing down", flush=True)
                time.sleep(5)

        slow = SlowTeardown()
        cli.app.run = lambda main, flags_parser: sys.exit(0)  # a run that finished
        cli.run()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=ROOT, text=True, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == "tearing down\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.stdout.close()


def test_unknown_config_field_is_named(tmp_path):
    cmd = train_cli(
        "--config.train.num_steps=3",
        "--config.model.hiden_size=3",
        "--config.train.log_every=1",
        "--workdir=/tmp/never",
    )
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "hiden_size" in out.stderr
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "FATAL Flags parsing error: unknown config field in --config.model.hiden_size: "
        '\'hiden_size\' Did you mean "hidden_sizes" instead of "hiden_size"?'
    )
    # An unknown section is named too.
    out = subprocess.run(
        cmd[:4] + ["--config.nosuch.x=3"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.stderr.strip().splitlines()[-1] == (
        "FATAL Flags parsing error: unknown config field in --config.nosuch.x: 'nosuch'"
    )
    # An AttributeError inside the config file is its own bug, not an unknown field.
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return object().no_such_attribute\n")
    out = subprocess.run(
        cmd[:3] + [f"--config={broken}", "--config.train.num_steps=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0
    assert "unknown config field" not in out.stderr
    assert "no_such_attribute" in out.stderr and "broken.py" in out.stderr


def test_expected_errors_are_one_line_and_the_traceback_is_for_verbose(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "jaxlm.train", *args, f"--workdir={tmp_path / 'never'}"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    out = run("--config=lstm:nope")  # an unknown variant, from a folder without configs/
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "FATAL Flags parsing error: configs/lstm.py: unknown variant 'nope'; expected smoke or ptb"
    ]
    out = run("--config=configs/nope.py")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "config file not found: configs/nope.py" in out.stderr
    # The PTB recipe without its corpus: refused before anything is prepared, in one line.
    out = run("--config=ptb:smoke", "--config.data.path=/no/such/ptb")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: config.data.path: /no/such/ptb does not exist (relative paths are taken from "
        f"{tmp_path}); give the corpus file or its folder"
    ]
    out = run("--config=ptb:smoke", "--config.data.path=/no/such/ptb", "--verbose")
    assert out.returncode == 1 and "Traceback" in out.stderr and "ConfigError" in out.stderr
    assert not (tmp_path / "never").exists()
    # A corpus file that holds no text, found only when the data are prepared.
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\xef\xbb\xbf")  # a byte-order mark and nothing else
    out = run(
        f"--config={ROOT / 'configs/lstm.py'}:smoke",
        f"--config.data.path={empty}",
        "--config.data.corpus=text_files",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"error: corpus file is empty: {empty} (it holds only a byte-order mark)"
    ]
    # A workdir another process is writing to.
    busy = tmp_path / "busy"
    with ck.exclusive(busy):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ck.holder(busy)["since"]))
        out = subprocess.run(
            train_cli(f"--workdir={busy}"), capture_output=True, text=True, cwd=ROOT, timeout=120
        )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"error: {busy} is being written by pid {os.getpid()} on host {socket.gethostname()} "
        f"(since {since})"
        ": wait for it to finish or stop it, or give this run another --workdir"
    ]


def test_cli_dry_run_prints_the_plan_and_its_json_and_writes_no_workdir(tmp_path):
    report = tmp_path / "plan.json"
    workdir = tmp_path / "run"
    cmd = train_cli("--config.parallel.strategy=fsdp", f"--workdir={workdir}", "--dry_run")
    out = subprocess.run(
        [*cmd, f"--dry_run_json={report}"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()  # after the corpus is prepared (once per data dir)
    assert any(line.startswith("Sharding: strategy fsdp on mesh {'data': 1, ") for line in lines)
    assert "  ('.*', ('data',))" in lines and lines[-2].startswith("Activations")
    assert any(line.startswith("Memory per device: parameters") for line in lines)
    assert any(line.startswith("Train step per device (float32): temporaries") for line in lines)
    assert lines[-1].startswith("DRY_RUN {")  # the last line, for a job balancer
    rep = json.loads(lines[-1][len("DRY_RUN ") :])
    assert json.loads(report.read_text()) == rep
    assert measure.parse_dry_run(out.stdout) == rep["peak_bytes"]  # what the balancer reads
    assert rep["strategy"] == "fsdp" and rep["devices"] == 1 and rep["peak_bytes"] > 0
    assert not workdir.exists() and "[train]" not in out.stdout  # no training, no run folder
    # A strategy that cannot split the model: one line, before any work.
    out = subprocess.run(
        train_cli("--config.parallel.strategy=tensor", "--dry_run"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: config.parallel.strategy: 'tensor' splits layers over the \"model\" axis; set "
        "config.parallel.model to its size (> 1; it is 1)"
    ]


def test_cli_ctrl_c_saves_exits_130_and_says_interrupted(tmp_path):
    workdir = tmp_path / "run"
    cmd = train_cli(
        f"--workdir={workdir}",
        "--config.train.num_steps=100000",
        "--config.train.log_every=1",
        "--config.train.eval_every=100000",
        "--config.train.checkpoint_every=100000",
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for(lambda: _status(workdir).get("step", 0) > 0, proc)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    status = _status(workdir)
    assert status["state"] == "interrupted"
    assert ck.list_steps(workdir) == [status["step"]]  # saved where it stopped
    state, _ = ck.load_state(workdir, status["step"], parts=("step",))
    assert int(state["step"]) == status["step"]


def _tmpfs(where: Path, size: str) -> bool:
    """Mounts a tmpfs of ``size`` at ``where``; False where this machine does not allow it."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.heavy
def test_cli_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(tmp_path):
    disk = tmp_path / "tiny"
    if not _tmpfs(disk, "1800k"):  # two checkpoints of the smoke LSTM (~790 KiB each) fit
        pytest.skip("needs root and mount to make a small filesystem")
    try:
        workdir = disk / "run"
        cmd = train_cli(
            f"--workdir={workdir}",
            "--config.train.num_steps=120",
            "--config.train.sample_tokens=0",
        )
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 2, out.stderr[-3000:]
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"error: saving checkpoint 90 to {workdir / 'checkpoints'} failed")
        assert "no space left on device (" in line and f"free on {disk}, it needs about" in line
        assert line.endswith("checkpoint 60 is intact")
        status = _status(workdir)
        assert status["state"] == "failed" and "no space left" in status["error"]
        assert ck.list_steps(workdir) == [30, 60]  # the partial 90 is gone
        ck.load_state(workdir, 60)  # reads back whole: its checksums hold
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"Resumed from {workdir / 'checkpoints'}/60" in again.stdout
        assert _status(workdir)["state"] == "finished" and _status(workdir)["step"] == 120
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
