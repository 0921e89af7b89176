"""Metric writers (console, JSONL, TensorBoard), run status and progress; process 0 writes."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax


def _is_writer() -> bool:
    return jax.process_index() == 0


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


class Monitor:
    """Writes metrics to the console, ``metrics.jsonl``, TensorBoard and ``status.json``.

    Args:
      workdir: the run folder.
      total_steps: the run's last step, for progress and ETA.
      tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.

    Example:
      >>> import tempfile
      >>> mon = Monitor(tempfile.mkdtemp(), total_steps=100, tensorboard=False)
      >>> mon.write(10, {"loss": 2.3}, split="train", eta=65.0)
      [train] step 10/100 | loss 2.3 | ETA 1:05
    """

    def __init__(self, workdir: str | Path, total_steps: int, *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.enabled = _is_writer()
        self._tb = None
        self._status: dict[str, Any] = {
            "state": "starting",
            "step": 0,
            "total_steps": total_steps,
            "eta_seconds": None,
        }
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(
        self,
        step: int,
        metrics: dict[str, float],
        split: str,
        *,
        echo: bool = True,
        eta: float | None = None,
    ) -> None:
        """Records metrics of one split at a step everywhere, and prints a line.

        Args:
          step: the training step they belong to.
          metrics: name to value.
          split: ``train``, ``eval`` (evaluations during training), ``validation``, ``test``.
          echo: also print the line.
          eta: seconds of training left, shown on train lines and in ``status.json``.
        """
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "split": split, **metrics, "time": time.time()}))
            f.write("\n")
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, step)
        if echo:
            print(self.format_line(step, metrics, split, eta), flush=True)
        self.status("running", step, eta=eta, **{f"{split}_{k}": v for k, v in metrics.items()})

    def format_line(
        self, step: int, metrics: dict[str, float], split: str, eta: float | None = None
    ) -> str:
        """``[train] step 20/60 | loss 3.21 | ... | ETA 0:42``."""
        parts = [f"[{split}] step {step}/{self.total_steps}"]
        for key, value in metrics.items():
            parts.append(f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:.0f}")
        if split == "train":
            parts.append(f"ETA {format_duration(eta if eta is not None else math.nan)}")
        return " | ".join(parts)

    def status(self, state: str, step: int, *, eta: float | None = None, **fields: Any) -> None:
        """Updates ``status.json``: state, step, total steps, ETA and the latest metrics."""
        if not self.enabled:
            return
        self._status.update(fields)
        if eta is not None:  # else the last one stands
            self._status["eta_seconds"] = eta
        self._status.update(
            state=state,
            step=step,
            total_steps=self.total_steps,
            updated=time.time(),
            pid=os.getpid(),
        )
        write_json_atomic(self.workdir / "status.json", self._status)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (safe to call more than once)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_status(workdir: str | Path) -> dict[str, Any] | None:
    """The ``status.json`` of a run, or None when it has none."""
    path = Path(workdir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else None
