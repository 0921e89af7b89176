"""jaxlm.checkpoints.lock: one writer per run folder; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from jaxlm import checkpoints as ck

# Takes the lock as jaxlm does (flock, then who holds it), then dies without a word.
_DIE_HOLDING = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.time()}).encode())
    print("HELD", flush=True)
    sys.stdin.read()  # until told to die
    os._exit(9)
    """
)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with ck.exclusive(tmp_path):
        assert ck.holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(ck.WorkdirBusy) as busy:
            with ck.exclusive(tmp_path):
                pass
    message = str(busy.value)
    assert f"{tmp_path} is being written by pid {os.getpid()}" in message
    assert f"on host {socket.gethostname()}" in message
    assert ck.holder(tmp_path) is None  # released and cleared: nobody holds it
    with ck.exclusive(tmp_path):  # free again
        pass


def test_another_process_holding_the_lock_refuses_then_its_death_frees_it(tmp_path):
    lock = tmp_path / ".lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIE_HOLDING, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(ck.WorkdirBusy, match=f"pid {proc.pid} on host"):
            with ck.exclusive(tmp_path):
                pass
        proc.stdin.close()  # it dies holding the lock, its name left in the file
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert ck.holder(tmp_path)["pid"] == proc.pid
    said = []
    with ck.exclusive(tmp_path, log=said.append):
        assert ck.holder(tmp_path)["pid"] == os.getpid()
    assert said == [
        f"Taking over the lock of {tmp_path} from pid {proc.pid} on host "
        f"{socket.gethostname()} (since {said[0].split('(since ')[1]}"
    ]
    assert said[0].endswith(", which is gone")


def test_readers_need_no_lock(run, cli, capsys):
    with ck.exclusive(run):  # a run is writing: inspecting, reading, verifying still work
        assert cli(["inspect", str(run)]) == 0
        assert cli(["verify", str(run)]) == 0
        assert int(ck.load_state(run)[0]["step"]) == 3
    assert "params" in capsys.readouterr().out
