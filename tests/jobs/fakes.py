"""What the job tests share: fake jobs (``fake_job.py``), a fake inventory of GPUs, a quick
balancer, and the attempts a fake job recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxlm.jobs import Balancer

FAKE_JOB = Path(__file__).with_name("fake_job.py")
GiB = 2**30


def fake(*args: object) -> tuple[str, ...]:
    """The command of a fake job with these flags."""
    return (sys.executable, str(FAKE_JOB), *map(str, args))


def gpus(tmp_path: Path, *sizes_gib: int, **fields: object) -> str:
    """A JSON inventory of GPUs of these sizes (GiB); returns its path."""
    entries = [{"index": i, "memory_total": f"{s}GiB", **fields} for i, s in enumerate(sizes_gib)]
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpus": entries}))
    return str(path)


def balance(queue: Path, inventory: str, timeout: float = 60.0, **options) -> dict:
    """Runs a balancer until the queue is empty (a fast poll); returns the records."""
    options.setdefault("poll", 0.05)
    options.setdefault("log", None)
    return Balancer(queue, inventory, **options).run(until_done=True, timeout=timeout)


def attempts(path: Path) -> list[dict]:
    """The lines fake jobs recorded in ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
