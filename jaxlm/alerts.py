"""Alerts: a shell command run when a run has news (a failure, a crash, a stall, a spike).

``config.monitor.on_event = "command"`` with ``config.monitor.command = "..."`` runs the command
through the shell for every health event of a run (:mod:`jaxlm.train.health`), with the event
in its environment:

- ``JAXLM_EVENT``: the event's name (``failure``, ``crash``, ``stall``, ``stall_over``,
  ``loss_spike``, ``grad_spike``, ``nonfinite_loss``, ``saturated_gates``);
- ``JAXLM_WORKDIR``: the run folder (absolute);
- ``JAXLM_STEP``: the step it happened at;
- ``JAXLM_MESSAGE``: one line saying what happened;
- ``JAXLM_EVENT_JSON``: the whole event row as JSON.

The command runs in the background: the run does not wait for it. If it cannot start or exits
with a non-zero status, the run says so in its log and goes on; an alert is never fatal.

Example::

    --config.monitor.on_event=command \\
    --config.monitor.command='notify-send "jaxlm $JAXLM_EVENT" "$JAXLM_MESSAGE"'
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Alerter:
    """Runs ``command`` for each event, in the background, and reports failures to ``log``.

    Args:
      command: a shell command ("" or None: no alerts).
      workdir: the run folder (``JAXLM_WORKDIR``).
      log: told when the command cannot start or fails (one line each).

    Example:
      >>> import tempfile
      >>> out = Path(tempfile.mkdtemp()) / "alert.txt"
      >>> alert = Alerter(f'echo "$JAXLM_EVENT $JAXLM_STEP" > {out}', "runs/x", log=print)
      >>> alert({"event": "stall", "step": 7, "message": "no step for 60 s"})
      >>> alert.wait()
      >>> out.read_text()
      'stall 7\\n'
    """

    def __init__(self, command: str | None, workdir: str | Path, log: Callable[[str], None]):
        self.command = (command or "").strip()
        self.workdir = Path(workdir).absolute()
        self._log = log
        self._threads: list[threading.Thread] = []

    def __call__(self, row: dict[str, Any]) -> None:
        """Starts the command for one event row (``event``, ``step``, ``message``, ...; a
        ``workdir`` in the row replaces the alerter's: the job balancer's alerts)."""
        if not self.command:
            return
        env = dict(
            os.environ,
            JAXLM_EVENT=str(row.get("event", "")),
            JAXLM_WORKDIR=str(row.get("workdir") or self.workdir),
            JAXLM_STEP=str(row.get("step", "")),
            JAXLM_MESSAGE=str(row.get("message", "")),
            JAXLM_EVENT_JSON=json.dumps(row, default=str),
        )
        thread = threading.Thread(
            target=self._run, args=(env, row.get("event")), name="jaxlm-alert", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run(self, env: dict[str, str], event: Any) -> None:
        try:
            proc = subprocess.run(
                self.command,
                shell=True,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        except OSError as e:
            self._log(f"Alert command for event {event} could not start: {e}")
            return
        if proc.returncode:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            tail = f": {err[-1]}" if err else ""
            self._log(
                f"Alert command for event {event} failed with status {proc.returncode}{tail} "
                "(the run goes on)"
            )

    def wait(self, timeout: float | None = 30.0) -> None:
        """Waits for the commands started so far (tests; a run never waits)."""
        for thread in self._threads:
            thread.join(timeout)


def from_config(monitor: Any, workdir: str | Path, log: Callable[[str], None]) -> Alerter | None:
    """The run's alerter: ``config.monitor.on_event == "command"``, else None.

    Args:
      monitor: the ``config.monitor`` section (None: a config from before it).
      workdir: the run folder.
      log: where failures of the command are reported.

    Returns:
      An :class:`Alerter`, or None when alerts are off.
    """
    if monitor is None or monitor.get("on_event", "none") != "command":
        return None
    return Alerter(monitor.command, workdir, log)
