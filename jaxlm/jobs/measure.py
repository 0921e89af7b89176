"""A job's memory need from its dry run: the job's own command with ``--dry_run``.

``python -m jaxlm.train ... --dry_run`` compiles the run ahead of time and prints, among its
memory figures, one machine-readable line::

    DRY_RUN {"peak_bytes": 6442450944, "devices": 1}

``peak_bytes`` is what the compiled step needs on each device. The dry run is given a GPU to
compile for without preallocating on it (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so it takes
little memory from the jobs already running there. A job that states ``memory_bytes`` is not
measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxlm.errors import JobError
from jaxlm.jobs.local import with_jaxlm_path
from jaxlm.jobs.queue import Job

PREFIX = "DRY_RUN "


def parse_dry_run(text: str) -> int | None:
    """The per-device ``peak_bytes`` of the last ``DRY_RUN {...}`` line of ``text``, or None.

    Example:
      >>> parse_dry_run('compiling...\\nDRY_RUN {"peak_bytes": 1048576, "devices": 2}\\n')
      1048576
      >>> parse_dry_run("no such line") is None
      True
    """
    for line in reversed(text.splitlines()):
        if not line.startswith(PREFIX):
            continue
        try:
            data = json.loads(line[len(PREFIX) :])
            peak = data["peak_bytes"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(peak, int | float) and peak > 0:
            return int(peak)
    return None


def dry_run_command(job: Job, python: str = sys.executable) -> list[str]:
    """The job's command with ``--dry_run``."""
    return [*job.argv(python), "--dry_run"]


def dry_run_env(job: Job, gpus: list[int] | None) -> dict[str, str]:
    """The dry run's environment: the job's own, its GPUs visible, no preallocation."""
    env = {**os.environ, **job.env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return with_jaxlm_path(env) if job.config is not None else env


def measure_need(job: Job, *, gpus: list[int] | None = None, timeout: float = 900.0) -> int:
    """The bytes ``job`` needs on each device: its ``memory_bytes``, or what its dry run says.

    Args:
      job: the job.
      gpus: the GPU indices to compile for, as many as the job takes (None: whatever the
        environment gives).
      timeout: seconds the dry run may take.

    Returns:
      Bytes per device.

    Raises:
      JobError: the dry run failed, timed out or printed no ``DRY_RUN`` line (the message
        holds the end of its output).

    Example:
      >>> measure_need(Job(command=("true",), memory_bytes=2**30))
      1073741824
    """
    if job.memory_bytes is not None:
        return job.memory_bytes
    probe = Probe(job, gpus)
    try:
        probe.process.wait(timeout)
    except subprocess.TimeoutExpired:
        probe.stop()
        raise JobError(f"the dry run of {job.label()} took over {timeout:.0f} s") from None
    return probe.result()


class Probe:
    """A dry run in the background, so that a balancer goes on watching its jobs meanwhile.

    Args:
      job: the job to measure.
      gpus: the GPU indices it compiles for.
    """

    def __init__(self, job: Job, gpus: list[int] | None):
        self.job = job
        self.output = Path(tempfile.mkstemp(prefix="jaxlm-dry-run-", suffix=".log")[1])
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                dry_run_command(job),
                cwd=job.cwd,
                env=dry_run_env(job, gpus),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def done(self) -> bool:
        """Whether the dry run ended."""
        return self.process.poll() is not None

    def result(self) -> int:
        """Bytes per device, once done.

        Raises:
          JobError: it failed or printed no ``DRY_RUN`` line.
        """
        text = self.output.read_text(errors="replace")
        self.output.unlink(missing_ok=True)
        need = parse_dry_run(text)
        if need is None:
            tail = "\n".join(text.splitlines()[-10:]) or "(no output)"
            raise JobError(
                f"the dry run of {self.job.label()} (exit {self.process.returncode}) printed no "
                f"DRY_RUN line; give the job memory_bytes (--memory) instead. It ended:\n{tail}"
            )
        return need

    def stop(self) -> None:
        """Ends the dry run."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.unlink(missing_ok=True)
