"""Four smoke training runs through the job balancer against the same four one after another.

One after another, each run has the whole machine; through the balancer (CPU inventory, one
core per job) as many run at once as there are cores, each pinned to its core. A smoke run is
mostly start-up, compiling and evaluation, which use one core, so running side by side pays.
Each repeat alternates the order of the two ways; the ratio is the sequential wall time over
the balancer's (above 1: the balancer finishes sooner), median over the repeats.

Usage: python benchmarks/jobs_throughput.py [--jobs 4] [--repeats 3] [--cores_per_job 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxlm.jobs import Balancer, Job, Policy, submit  # noqa: E402


def jobs(folder: Path, count: int, steps: int | None) -> list[Job]:
    """``count`` smoke runs of different seeds, each with its own workdir under ``folder``."""
    overrides: dict = {} if steps is None else {"train.num_steps": steps}
    return [
        Job(
            config="lstm:smoke",
            workdir=str(folder / f"run{i}"),
            overrides={**overrides, "seed": i},
            cwd=str(ROOT),
        )
        for i in range(count)
    ]


def one_after_another(batch: list[Job]) -> float:
    """Wall seconds to run the jobs one at a time, each with every core."""
    start = time.perf_counter()
    for job in batch:
        done = subprocess.run(job.argv(sys.executable), cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(job.argv())} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def balanced(batch: list[Job], queue: Path, cores_per_job: int) -> float:
    """Wall seconds to run the jobs through a balancer on this machine's cores."""
    for job in batch:
        submit(job, queue=queue)
    start = time.perf_counter()
    records = Balancer(
        queue, "cpu", policy=Policy(cores_per_job=cores_per_job), poll=0.1, log=None
    ).run(until_done=True)
    seconds = time.perf_counter() - start
    failed = [r for r in records.values() if r.state != "finished"]
    if failed:
        sys.exit(f"job {failed[0].id} {failed[0].state}: {failed[0].message}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4, help="smoke runs per batch")
    p.add_argument("--repeats", type=int, default=3, help="timed batches of each way")
    p.add_argument("--cores_per_job", type=int, default=1, help="cores of each balanced job")
    p.add_argument("--steps", type=int, default=None, help="train.num_steps (default: smoke's)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{args.jobs} smoke jobs, {cores} cores, {args.cores_per_job} core(s) per balanced job")
    scratch = Path(tempfile.mkdtemp(prefix="jobs_throughput_"))
    try:
        one_after_another(jobs(scratch / "warmup", 1, args.steps))  # data prepared, caches warm
        ratios = []
        for repeat in range(args.repeats):
            folder = scratch / str(repeat)
            ways = [
                (
                    "one after another",
                    lambda f=folder: one_after_another(jobs(f / "seq", args.jobs, args.steps)),
                ),
                (
                    "balanced",
                    lambda f=folder: balanced(
                        jobs(f / "bal", args.jobs, args.steps), f / "queue", args.cores_per_job
                    ),
                ),
            ]
            if repeat % 2:
                ways.reverse()
            times = {name: run() for name, run in ways}
            ratio = times["one after another"] / times["balanced"]
            ratios.append(ratio)
            print(
                f"repeat {repeat + 1}: one after another {times['one after another']:.1f} s, "
                f"balanced {times['balanced']:.1f} s, ratio {ratio:.2f}",
                flush=True,
            )
        print(
            f"median ratio {statistics.median(ratios):.2f} "
            f"(runs {min(ratios):.2f}-{max(ratios):.2f}): the balancer finishes "
            f"{args.jobs} jobs {statistics.median(ratios):.2f}x sooner"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
