"""Kills a real training process with SIGKILL after its first checkpoint, resumes it, and
compares the result with an uninterrupted run (final losses and every parameter).

Usage: python benchmarks/resume_sigkill.py [--steps 300] [--every 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(
    workdir: Path, args: list[str], kill_after: int | None = None, timeout_s: float = 1800.0
) -> str | None:
    """Runs training; returns its "Final ..." line, or SIGKILLs it once checkpoint
    ``kill_after`` exists. Exits with the child's last output if it fails or never gets there."""
    cmd = [sys.executable, "-m", "jaxlm.train", *args, f"--workdir={workdir}"]
    if kill_after is None:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )
        final = [line for line in proc.stdout.splitlines() if line.startswith("Final")]
        if proc.returncode != 0 or not final:
            sys.exit(
                f"{' '.join(cmd)}\nexited with code {proc.returncode} without a 'Final' "
                f"line; its last output:\n{_tail(proc.stdout)}"
            )
        return final[-1]
    # The output goes to a file: an unread pipe could fill and stall the child.
    log = workdir.parent / f"{workdir.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    target = workdir / "checkpoints" / str(kill_after)
    while not target.exists():
        if proc.poll() is not None:
            sys.exit(
                f"{' '.join(cmd)}\nexited with code {proc.returncode} before writing "
                f"checkpoint {kill_after}; its last output:\n{_tail(log.read_text())}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            sys.exit(
                f"{' '.join(cmd)}\nwrote no checkpoint {kill_after} in {timeout_s:.0f} s; "
                f"its last output:\n{_tail(log.read_text())}"
            )
        time.sleep(0.01)
    if proc.poll() is not None:
        sys.exit(
            f"the run finished (code {proc.returncode}) before it could be killed after "
            f"checkpoint {kill_after}; use more --steps or a smaller --every"
        )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    present = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    print(f"SIGKILL after checkpoint {kill_after}; checkpoint folders then: {present}")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    a = parser.parse_args()
    args = [
        "--config=configs/lstm.py:smoke",
        f"--config.train.num_steps={a.steps}",
        f"--config.train.checkpoint_every={a.every}",
        "--config.train.eval_every=100",
        "--config.train.log_every=50",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="jaxlm-sigkill-"))
    try:
        straight = run(tmp / "straight", args)
        run(tmp / "killed", args, kill_after=a.every)
        resumed = run(tmp / "killed", args)
        print(f"uninterrupted:    {straight}\nkilled + resumed: {resumed}")
        sys.path.insert(0, str(ROOT))
        from jaxlm import checkpoints

        pa = checkpoints.load_state(tmp / "straight")[0]["params"]
        pb = checkpoints.load_state(tmp / "killed")[0]["params"]
        diff = max(
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True)
        )
        print(f"max |parameter difference|: {diff}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
