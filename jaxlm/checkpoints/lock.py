"""One writer per run folder: an exclusive OS file lock on ``<workdir>/.lock``.

The lock is ``fcntl.flock``'s: the kernel releases it when the holder dies, however it dies, so
a lock left by a killed run is taken over by the next one without any clean-up. The file says
who holds it (pid, host, since when), so a second writer is refused with the holder named.
Readers (evaluate, inspect, the checkpoint tools' reads) take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from jaxlm.checkpoints.layout import PathLike, absolute
from jaxlm.errors import WorkdirBusy

LOCK_FILE = ".lock"


def holder(workdir: PathLike) -> dict[str, Any] | None:
    """Who holds a run folder's lock (or held it and died holding it), or None.

    Example:
      >>> holder("/nonexistent/run") is None
      True
    """
    try:
        data = json.loads((absolute(workdir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (since {since})"


@contextlib.contextmanager
def exclusive(workdir: PathLike, log: Any = None) -> Iterator[None]:
    """Holds the run folder's lock for the block; refuses at once if another process holds it.

    Args:
      workdir: the run folder (created if needed).
      log: called with one line when the lock of a process that is gone is taken over.

    Raises:
      WorkdirBusy: another live process holds the lock (the message names it).

    Example:
      >>> import tempfile
      >>> run = tempfile.mkdtemp()
      >>> with exclusive(run):
      ...     holder(run)["pid"] == os.getpid()
      True
    """
    workdir = absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"{workdir} is being written by {_describe(holder(workdir))}: wait for it to "
                "finish or stop it, or give this run another --workdir"
            ) from None
        previous = holder(workdir)
        if previous and log is not None and previous.get("pid") != os.getpid():
            log(f"Taking over the lock of {workdir} from {_describe(previous)}, which is gone")
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a file that still names a holder means that holder died
    finally:
        os.close(fd)  # releases the lock
