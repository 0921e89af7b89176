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
      >>> mon = Monitor("/tmp/run", total_steps=100)  # doctest: +SKIP
      >>> mon.write(10, {"loss": 2.3}, split="train")  # doctest: +SKIP
    """

    def __init__(self, workdir: str | Path, total_steps: int, *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.enabled = _is_writer()
        self._tb = None
        self._status: dict[str, Any] = {"state": "starting", "step": 0, "total_steps": total_steps}
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        self._rate_start: tuple[float, int] | None = None

    def start_timing(self, step: int) -> None:
        """Marks where speed and ETA are measured from (after the first compiled step)."""
        self._rate_start = (time.perf_counter(), step)

    def steps_per_second(self, step: int) -> float:
        if self._rate_start is None or step <= self._rate_start[1]:
            return float("nan")
        t0, s0 = self._rate_start
        return (step - s0) / max(time.perf_counter() - t0, 1e-9)

    def eta_seconds(self, step: int) -> float:
        return (self.total_steps - step) / self.steps_per_second(step)

    def write(self, step: int, metrics: dict[str, float], split: str, echo: bool = True) -> None:
        """Records metrics of one split at a step everywhere, and prints a line."""
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
            print(self.format_line(step, metrics, split), flush=True)
        self.status("running", step, **{f"{split}_{k}": v for k, v in metrics.items()})

    def format_line(self, step: int, metrics: dict[str, float], split: str) -> str:
        parts = [f"[{split}] step {step}/{self.total_steps}"]
        for key, value in metrics.items():
            parts.append(f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:.0f}")
        if split == "train":
            parts.append(f"ETA {format_duration(self.eta_seconds(step))}")
        return " | ".join(parts)

    def status(self, state: str, step: int, **fields: Any) -> None:
        """Updates ``status.json``: state, step, total steps, ETA and the latest metrics."""
        if not self.enabled:
            return
        self._status.update(fields)
        eta = self.eta_seconds(step)
        self._status.update(
            state=state,
            step=step,
            total_steps=self.total_steps,
            eta_seconds=eta if math.isfinite(eta) else None,
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
