"""A stand-in for a training run, for the balancer's tests: it records what it was given, and
waits, runs out of memory, is preempted, fails or prints a dry run's line as its flags say.

``python fake_job.py --record FILE [--sleep S] [--barrier DIR N] [--oom_below F]
[--preempt_once WORKDIR] [--exit CODE] [--dry_run_bytes N] [--until_sigterm]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def record(path: str, **fields: object) -> None:
    """Appends one JSON line about this attempt to ``path``."""
    row = {
        "job": os.environ.get("JAXLM_JOB_ID"),
        "attempt": int(os.environ.get("JAXLM_JOB_ATTEMPT", "0")),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "order": os.environ.get("CUDA_DEVICE_ORDER"),
        "fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "cores": sorted(os.sched_getaffinity(0)),
        "pid": os.getpid(),
        "time": time.time(),
        **fields,
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--record", default="")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--barrier", nargs=2, default=None)
    p.add_argument("--oom_below", type=float, default=0.0)
    p.add_argument("--preempt_once", default="")
    p.add_argument("--exit", type=int, default=0)
    p.add_argument("--dry_run_bytes", type=int, default=0)
    p.add_argument("--dry_run", action="store_true")
    p.add_argument("--until_sigterm", action="store_true")
    args = p.parse_args()
    if args.dry_run:
        print("compiling ahead of time")
        print("DRY_RUN " + json.dumps({"peak_bytes": args.dry_run_bytes, "devices": 1}))
        return 0
    if args.record:
        record(args.record, event="start")
    print(f"job {os.environ.get('JAXLM_JOB_ID')} attempt {os.environ.get('JAXLM_JOB_ATTEMPT')}")
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or 0)
    if fraction < args.oom_below:
        print(
            "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while "
            "trying to allocate 4.00GiB.",
            flush=True,
        )
        return 1
    if args.barrier:  # all N reach it together, or it times out
        folder, count = args.barrier[0], int(args.barrier[1])
        open(os.path.join(folder, str(os.getpid())), "w").close()
        deadline = time.time() + 30
        while len(os.listdir(folder)) < count and time.time() < deadline:
            time.sleep(0.02)
        print(f"barrier: {len(os.listdir(folder))} of {count} together")
    if args.preempt_once:
        checkpoint = os.path.join(args.preempt_once, "checkpoint")
        if os.path.exists(checkpoint):
            print(f"resumed from step {open(checkpoint).read()}")
        else:
            os.makedirs(args.preempt_once, exist_ok=True)
            with open(checkpoint, "w") as f:
                f.write("5")
            print("preempted at step 5", flush=True)
            return 143
    if args.until_sigterm:
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        print("waiting for SIGTERM", flush=True)  # a test may signal from here on
        deadline = time.time() + 60
        while not stop and time.time() < deadline:
            time.sleep(0.02)
        print("got SIGTERM, saved and stopped" if stop else "no SIGTERM came")
        if args.record:
            record(args.record, event="end")
        return 143
    time.sleep(args.sleep)
    for line in range(3):
        print(f"line {line} of the output")
    if args.record:
        record(args.record, event="end")
    return args.exit


if __name__ == "__main__":
    sys.exit(main())
