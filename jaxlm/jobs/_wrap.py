"""Runs one attempt of a job and writes its exit status to a file: the balancer's launcher.

``python jaxlm/jobs/_wrap.py --lock L --exit E [--cores 0,1] -- COMMAND...``

It takes the attempt's lock (``flock`` on L, which the kernel releases however this process
ends) and holds it while the command runs, then writes ``{"code": N}`` to E and exits with N.
A balancer that restarts tells a live attempt (its lock is held) from an ended one (E exists)
from a lost one (neither), which it marks by writing E itself, under the lock; an attempt that
finds E already there when it gets the lock has been given up and runs nothing. Signals it
receives (SIGTERM, SIGINT, SIGHUP) go on to the command.

Only the standard library is imported, by path, so it starts fast and runs whichever jaxlm
(or none) the job's environment has.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

SUPERSEDED = 75  # the attempt was given up before it started: nothing ran


def write_exit(path: str, data: dict) -> None:
    """Writes the exit file atomically and durably."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({**data, "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def take_lock(path: str, seconds: float = 10.0) -> int | None:
    """The lock's fd, once it is ours; None if another holds it for ``seconds``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.02)  # a balancer looking at the lock holds it for microseconds


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="_wrap.py")
    p.add_argument("--lock", required=True)
    p.add_argument("--exit", required=True)
    p.add_argument("--cores", default="")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    fd = take_lock(args.lock)
    if fd is None or os.path.exists(args.exit):
        return SUPERSEDED
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    pending: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum: int, frame: object) -> None:
        del frame
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as e:
        print(f"error: cannot start {command[:1]}: {e}", file=sys.stderr, flush=True)
        write_exit(args.exit, {"code": 127})
        return 127
    for signum in pending:
        child.send_signal(signum)
    code = child.wait()
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    write_exit(args.exit, {"code": code})
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
