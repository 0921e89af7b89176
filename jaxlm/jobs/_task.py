"""One attempt of a job inside a Ray task (shipped by value: workers need no jaxlm).

The command runs as a child of the task's worker with its output appended to the job's log (a
path the worker must see: the queue folder on shared storage, as the workdirs are). The child
gets SIGTERM when the worker dies (``PR_SET_PDEATHSIG``), so a training run killed with its
driver still checkpoints; a cancel (``ray.cancel``) is passed on to it as SIGTERM too.
"""

from __future__ import annotations


def run_attempt(argv: list[str], cwd: str | None, env: dict[str, str], log: str) -> int:
    """Runs ``argv`` with ``env`` added to the worker's (Ray has set CUDA_VISIBLE_DEVICES) and
    returns its exit status (128 + N for a signal N)."""
    import ctypes
    import os
    import signal
    import subprocess

    def die_with_worker() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    with open(log, "ab") as out:
        try:
            child = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_worker,
            )
        except OSError as e:
            out.write(f"error: cannot start {argv[:1]}: {e}\n".encode())
            return 127
        try:
            code = child.wait()
        except KeyboardInterrupt:  # ray.cancel
            child.send_signal(signal.SIGTERM)
            code = child.wait()
    return 128 - code if code < 0 else code
