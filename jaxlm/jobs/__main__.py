"""The job balancer: ``python -m jaxlm.jobs <verb> ...``; ``<verb> --help`` for each.

Verbs:
  submit     add a job: a config with overrides and a workdir, or a command after --
  run        the balancer: places queued jobs on the GPUs (or cores) and watches them
  status     a table of the jobs (--json: their records)
  cancel     drop queued jobs, stop running ones (SIGTERM: a training run checkpoints)
  logs       a job's output, every attempt under its header (--follow)
  inventory  the devices the balancer would use

Every verb takes --queue (default $JAXLM_JOBS_DIR or runs/jobs). Bad input is one line on
stderr and exit status 2 (--verbose: the traceback).

Examples:
  python -m jaxlm.jobs submit --config=lstm:smoke --workdir=runs/a --config.seed=1
  python -m jaxlm.jobs submit --memory=6GiB --workdir=runs/b -- python train.py --lr=3e-4
  python -m jaxlm.jobs run --until_done
  python -m jaxlm.jobs run --inventory=gpus.json --backend=ray --address=auto
  python -m jaxlm.jobs status
  python -m jaxlm.jobs cancel 3
  python -m jaxlm.jobs logs 3 --follow
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--queue", help="the queue folder (default $JAXLM_JOBS_DIR or runs/jobs)")
    common.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    top = argparse.ArgumentParser(
        prog="python -m jaxlm.jobs",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "submit",
        parents=[common],
        help="add a job to the queue",
        description="Add a job: --config and --workdir (any --config.a.b=v after them are "
        "its overrides), or a plain command after --.",
    )
    p.add_argument("--config", help="recipe file or name with its variant, e.g. lstm:smoke")
    p.add_argument("--workdir", help="the run folder (required with --config)")
    p.add_argument("--memory", help="memory it needs per GPU, e.g. 6GiB (default: its dry run)")
    p.add_argument("--gpus", type=int, help="GPUs it runs on (default: run --gpus_per_job)")
    p.add_argument("--cores", type=int, help="CPU cores, when there is no GPU")
    p.add_argument("--seconds", type=float, help="how long it is expected to run")
    p.add_argument("--name", default="", help="a label for the status table")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for its environment")

    p = verbs.add_parser("run", parents=[common], help="run the balancer")
    p.add_argument("--inventory", default="auto", help="auto, nvml, cpu, or a JSON file of devices")
    p.add_argument("--backend", default="local", choices=("local", "ray"))
    p.add_argument("--address", help="the Ray cluster (--backend=ray; default: a local one)")
    p.add_argument("--gpu_memory", help="memory of each GPU of the Ray cluster, e.g. 80GiB")
    p.add_argument("--until_done", action="store_true", help="stop when no job is left")
    p.add_argument(
        "--alert_command",
        help="a shell command run when a job fails or crashes ($JAXLM_EVENT, $JAXLM_WORKDIR, "
        "$JAXLM_MESSAGE in its environment; see docs/monitoring.md)",
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks (default 1)")
    p.add_argument("--gpus_per_job", type=int, default=1, help="GPUs of a job (default 1)")
    p.add_argument("--cores_per_job", type=int, default=1, help="cores of a CPU job (default 1)")
    p.add_argument("--headroom", type=float, default=0.1, help="added to a measured need")
    p.add_argument("--max_fraction", type=float, default=0.95, help="largest memory fraction")
    p.add_argument(
        "--default_seconds", type=float, default=300.0, help="work of a job that says none"
    )

    p = verbs.add_parser("status", parents=[common], help="a table of the jobs")
    p.add_argument("ids", nargs="*", help="only these jobs")
    p.add_argument("--json", action="store_true", help="the records as JSON")

    p = verbs.add_parser("cancel", parents=[common], help="cancel jobs")
    p.add_argument("ids", nargs="*", help="the jobs")
    p.add_argument("--all", action="store_true", help="every queued or running job")

    p = verbs.add_parser("logs", parents=[common], help="a job's output")
    p.add_argument("id", help="the job")
    p.add_argument("--lines", type=int, help="only the last N lines")
    p.add_argument("--follow", action="store_true", help="go on printing until the job ends")

    p = verbs.add_parser("inventory", parents=[common], help="the devices, as the balancer sees")
    p.add_argument("--inventory", default="auto", help="auto, nvml, cpu, or a JSON file")
    return top


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.verb != "submit" and (extra or command is not None):
        parser.error(f"unrecognized arguments: {' '.join(extra or ['--'])}")
    from jaxlm.errors import JaxlmError

    try:
        verb = {
            "submit": _submit,
            "run": _run,
            "status": _status,
            "cancel": _cancel,
            "logs": _logs,
            "inventory": _inventory,
        }[args.verb]
        code = verb(args, extra, command) if args.verb == "submit" else verb(args)
    except JaxlmError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(code or 0)


def _submit(args: argparse.Namespace, extra: list[str], command: list[str] | None) -> int:
    from jaxlm.errors import JobError
    from jaxlm.jobs import api
    from jaxlm.jobs.queue import Job, parse_size

    overrides = _overrides(extra)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobError(f"--env: expected KEY=VALUE, got {item!r}")
        env[key] = value
    job = Job(
        config=args.config,
        overrides=overrides,
        workdir=args.workdir,
        command=tuple(command) if command else None,
        memory_bytes=parse_size(args.memory, "--memory") if args.memory else None,
        gpus=args.gpus,
        cores=args.cores,
        seconds=args.seconds,
        name=args.name,
        env=env,
    )
    print(api.submit(job, queue=args.queue))
    return 0


def _overrides(extra: list[str]) -> dict[str, str]:
    """``--config.a.b=v`` (or ``--config.a.b v``) arguments as ``{"a.b": "v"}``."""
    from jaxlm.errors import JobError

    overrides: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise JobError(f"submit: unrecognized argument {arg!r} (a command goes after --)")
        key, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise JobError(f"submit: {arg} needs a value")
            value, i = extra[i + 1], i + 1
        overrides[key] = value
        i += 1
    return overrides


def _run(args: argparse.Namespace) -> int:
    from jaxlm.jobs.balancer import Policy
    from jaxlm.jobs.loop import Balancer
    from jaxlm.jobs.queue import parse_size

    policy = Policy(
        headroom=args.headroom,
        gpus_per_job=args.gpus_per_job,
        max_fraction=args.max_fraction,
        cores_per_job=args.cores_per_job,
        default_seconds=args.default_seconds,
    )
    gpu_memory = parse_size(args.gpu_memory, "--gpu_memory") if args.gpu_memory else None
    from jaxlm.jobs.api import queue_folder

    balancer = Balancer(
        queue_folder(args.queue),
        args.inventory,
        backend=args.backend,
        address=args.address,
        gpu_memory=gpu_memory,
        policy=policy,
        poll=args.poll,
        log=lambda line: print(line, flush=True),
        alert_command=args.alert_command,
    )
    records = balancer.run(until_done=args.until_done)
    failed = [r.id for r in records.values() if r.state == "failed"]
    return 1 if args.until_done and failed else 0


def _status(args: argparse.Namespace) -> int:
    from jaxlm.jobs import api
    from jaxlm.jobs.loop import balancer_holder, balancer_running

    records = api.status(queue=args.queue)
    assert isinstance(records, dict)
    if args.ids:
        records = {i: api.status(i, queue=args.queue) for i in args.ids}  # type: ignore[misc]
    if args.json:
        import dataclasses

        rows = []
        for r in records.values():
            row = dataclasses.asdict(r)
            row["job"] = r.job.to_dict()
            rows.append(row)
        print(json.dumps(rows, indent=1))
        return 0
    folder = api.queue_folder(args.queue)
    print(table(list(records.values())))
    who = f"balancer: {balancer_holder(folder)}" if balancer_running(folder) else "no balancer"
    counts: dict[str, int] = {}
    for r in records.values():
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no jobs"
    print(f"{folder}: {summary}; {who}")
    return 0


def table(records: list) -> str:
    """The status table of job records: one line each."""
    from jaxlm.jobs.queue import format_size

    header = ("ID", "STATE", "TRY", "DEVICES", "NEED", "SHARE", "TIME", "JOB", "NOTE")
    rows = [header]
    now = time.time()
    for r in records:
        place = r.placement or {}
        share = "-"
        if place.get("fraction") is not None:
            share = f"{place['fraction']:.3f}"
        elif place.get("cores"):
            share = "cores " + ",".join(map(str, place["cores"]))
        if r.started is None:
            spent = "-"
        else:
            spent = _duration((r.ended if r.state != "running" else now) - (r.started or now))
        note = (r.message.splitlines() or [""])[0][:70] if r.state != "finished" else ""
        rows.append(
            (
                r.id,
                r.state,
                str(r.attempt),
                ",".join(place.get("devices", [])) or "-",
                format_size(r.need),
                share,
                spent,
                r.job.label()[:40],
                note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"`` (as jaxlm.monitor writes it, without importing JAX)."""
    h, rem = divmod(int(round(max(seconds, 0))), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _cancel(args: argparse.Namespace) -> int:
    from jaxlm.errors import JobError
    from jaxlm.jobs import api
    from jaxlm.jobs.queue import ACTIVE

    ids = list(args.ids)
    if args.all:
        records = api.status(queue=args.queue)
        assert isinstance(records, dict)
        ids += [r.id for r in records.values() if r.state in ACTIVE and r.id not in ids]
    if not ids:
        raise JobError("cancel: name the jobs, or --all")
    for job_id in ids:
        record = api.cancel(job_id, queue=args.queue)
        print(f"job {record.id}: cancel requested ({record.state})")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from jaxlm.jobs import api
    from jaxlm.jobs.queue import FINAL

    text = api.logs(args.id, queue=args.queue, lines=args.lines)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if not args.follow:
        return 0
    path = api.queue_folder(args.queue) / "logs" / f"{args.id}.log"
    seen = path.stat().st_size if path.exists() else 0
    while True:
        state = api.status(args.id, queue=args.queue).state  # type: ignore[union-attr]
        try:
            with open(path, "rb") as f:
                f.seek(seen)
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
            seen += len(data)
        if state in FINAL and not data:
            return 0
        time.sleep(0.5)


def _inventory(args: argparse.Namespace) -> int:
    from jaxlm.jobs.inventory import Inventory
    from jaxlm.jobs.queue import format_size

    inventory = Inventory(args.inventory)
    for d in inventory.devices():
        if d.kind == "cpu":
            print(f"cpu: cores {','.join(map(str, d.cores))}, memory {format_size(d.memory_total)}")
        else:
            print(
                f"{d.key}: {d.name or 'GPU'}, {format_size(d.memory_total)}, "
                f"{format_size(d.memory_used)} used, {d.utilization:.0%} busy, "
                f"{len(d.processes)} processes"
            )
    return 0


if __name__ == "__main__":
    main()
