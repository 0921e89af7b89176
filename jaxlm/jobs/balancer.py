"""Placement: which device(s) the next job goes to, what share it gets, and its environment.

A GPU job needs ``need`` bytes on each of its GPUs (from its dry run, or stated). It is given
the memory fraction ``ceil(need * (1 + headroom) / total, 3 decimals)`` of a GPU as
``XLA_PYTHON_CLIENT_MEM_FRACTION``, so JAX's pool stops at its share, and it reserves that
share plus the device's per-process overhead (a CUDA context). It fits on a GPU whose memory,
less what other programs use and what the balancer's own jobs reserved, holds its share.

Among the GPUs where it fits, it goes to the one where it would wait least: the work already
there (the remaining seconds of the balancer's jobs on it) plus its own, slowed by how busy the
device is measured to be::

    wait(gpu) = (remaining(gpu) + own) / (1 - min(utilization(gpu), 0.9))

Ties go to the GPU with more free memory, then the lower index. A job of ``gpus=k`` takes the
k GPUs of least wait, one fraction on all. A job running ``alone`` (retried after running out
of memory, or of unknown need) takes a GPU no other job of ours uses, at ``max_fraction``.

On CPU, a job gets a set of cores of its own (its affinity) and as many threads.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from jaxlm.errors import JobError
from jaxlm.jobs.inventory import Device
from jaxlm.jobs.queue import format_size


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the balancer shares devices.

    Attributes:
      headroom: the fraction added to a job's measured need before it becomes its share.
      gpus_per_job: GPUs a job gets when it does not say.
      max_fraction: the largest memory fraction a job is given (a job alone gets this).
      cores_per_job: cores a CPU job gets when it does not say.
      default_seconds: the work a job counts for when neither it nor its run says.
    """

    headroom: float = 0.1
    gpus_per_job: int = 1
    max_fraction: float = 0.95
    cores_per_job: int = 1
    default_seconds: float = 300.0


@dataclasses.dataclass(frozen=True)
class Running:
    """What placement needs to know of a job already running.

    Attributes:
      devices: the keys of its devices (``"gpu0"``, ``"cpu"``).
      reserved: bytes it reserved on each of its GPUs.
      cores: its CPU cores.
      alone: it runs alone on its devices.
      remaining: seconds of work it has left.
      pid: its process (the leader of its session), to tell its GPU memory from others'.
    """

    devices: tuple[str, ...]
    reserved: int = 0
    cores: tuple[int, ...] = ()
    alone: bool = False
    remaining: float = 0.0
    pid: int | None = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one attempt of a job runs and with what.

    Attributes:
      devices: device keys.
      fraction: the memory fraction of each GPU (None on CPU).
      reserved: bytes reserved on each GPU (the fraction of its memory, plus overhead).
      cores: CPU cores (its affinity), empty on GPU.
      alone: no other job of ours shares its devices.
      env: the variables the job's process gets.
      resources: what a cluster scheduler is asked for (Ray's ``num_gpus``, ``num_cpus``).
    """

    devices: tuple[str, ...]
    fraction: float | None = None
    reserved: int = 0
    cores: tuple[int, ...] = ()
    alone: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    resources: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the journal's form)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        """The placement :meth:`to_dict` wrote."""
        return cls(
            tuple(data["devices"]),
            data.get("fraction"),
            int(data.get("reserved", 0)),
            tuple(data.get("cores", ())),
            bool(data.get("alone", False)),
            dict(data.get("env", {})),
            dict(data.get("resources", {})),
        )

    def running(self, remaining: float = 0.0, pid: int | None = None) -> Running:
        """This placement as a running job."""
        return Running(self.devices, self.reserved, self.cores, self.alone, remaining, pid)


def memory_fraction(need: int, total: int, headroom: float) -> float:
    """The share of a GPU of ``total`` bytes that holds ``need`` bytes and the headroom, rounded
    up to 3 decimals.

    Example:
      >>> memory_fraction(4 * 2**30, 16 * 2**30, headroom=0.1)
      0.275
    """
    return math.ceil(need * (1 + headroom) / total * 1000 - 1e-9) / 1000


class Unplaceable(JobError):
    """A job that no device of the inventory can hold even when idle."""


def place(
    need: int | None,
    *,
    gpus: int | None = None,
    cores: int | None = None,
    seconds: float | None = None,
    alone: bool = False,
    memory_scale: float = 1.0,
    devices: list[Device],
    running: list[Running],
    policy: Policy = Policy(),
    blocked: frozenset[str] = frozenset(),
) -> Placement | None:
    """Where a job goes now, or None if it must wait.

    Args:
      need: bytes it needs on each GPU; None: unknown, so it runs alone.
      gpus: how many GPUs it takes (None: ``policy.gpus_per_job``).
      cores: CPU cores it takes (None: ``policy.cores_per_job``).
      seconds: its expected work (None: ``policy.default_seconds``).
      alone: it must not share its devices with other jobs of ours.
      memory_scale: multiplies ``need`` (a retry after running out of memory).
      devices: the inventory now.
      running: the jobs of ours already running.
      policy: the sharing rules.
      blocked: device keys kept free for a job waiting to run alone there.

    Returns:
      The placement, or None when it fits nowhere now.

    Raises:
      Unplaceable: it could not fit even on idle devices (the message says why).

    Example:
      >>> gpus = [Device("gpu", i, memory_total=16 * 2**30) for i in (0, 1)]
      >>> first = place(8 * 2**30, devices=gpus, running=[])
      >>> first.devices, first.env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
      (('gpu0',), '0.550')
      >>> place(6 * 2**30, devices=gpus, running=[first.running(300.0)]).devices
      ('gpu1',)
    """
    if devices and devices[0].kind == "cpu":
        return _place_cpu(devices[0], cores, alone, running, policy)
    if need is None:
        alone = True
    gpus = gpus or policy.gpus_per_job
    own = policy.default_seconds if seconds is None else seconds
    if gpus > len(devices):
        raise Unplaceable(f"it needs {gpus} GPUs; the inventory has {len(devices)}")
    options = []
    for device in devices:
        share = _share(device, need, memory_scale, alone, policy)
        if share is None:
            continue
        fraction, reserved = share
        there = [r for r in running if device.key in r.devices]
        free = device.memory_total - foreign_memory(device, there) - sum(r.reserved for r in there)
        if device.key in blocked or reserved > free or any(r.alone for r in there):
            continue
        if alone and there:
            continue
        remaining = sum(r.remaining for r in there)
        wait = (remaining + own) / (1 - min(device.utilization, 0.9))
        options.append((wait, -free, device.index, device, fraction))
    fits_idle = sum(_share(d, need, memory_scale, alone, policy) is not None for d in devices)
    if fits_idle < gpus and memory_scale > 1 and not alone:  # more memory than a GPU's share:
        return place(  # the most it can have is a GPU alone
            need,
            gpus=gpus,
            seconds=seconds,
            alone=True,
            devices=devices,
            running=running,
            policy=policy,
            blocked=blocked,
        )
    if fits_idle < gpus:
        largest = max(d.memory_total for d in devices)
        wanted = (need or 0) * memory_scale * (1 + policy.headroom)
        raise Unplaceable(
            f"it needs {format_size(wanted)} on each of {gpus} GPU(s) with headroom "
            f"{policy.headroom}; the largest GPU holds {format_size(largest * policy.max_fraction)}"
            f" at fraction {policy.max_fraction}"
        )
    if len(options) < gpus:
        return None
    chosen = sorted(options, key=lambda o: o[:3])[:gpus]
    fraction = max(o[4] for o in chosen)
    reserved = [int(fraction * o[3].memory_total) + o[3].overhead for o in chosen]
    for (_, minus_free, *_), size in zip(chosen, reserved, strict=True):
        if size > -minus_free:
            return None  # a larger device's fraction does not fit on a smaller one now
    keys = tuple(o[3].key for o in chosen)
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(o[3].index) for o in chosen),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.3f}",
    }
    return Placement(keys, fraction, max(reserved), (), alone, env)


def _share(
    device: Device, need: int | None, scale: float, alone: bool, policy: Policy
) -> tuple[float, int] | None:
    """(fraction, reserved bytes) of a job on an idle ``device``; None if it cannot fit."""
    if alone:
        fraction = policy.max_fraction
        if need is not None and need * scale > fraction * device.memory_total:
            return None
    else:
        fraction = memory_fraction(int(need * scale), device.memory_total, policy.headroom)
        if fraction > policy.max_fraction:
            return None
    return fraction, int(fraction * device.memory_total) + device.overhead


def foreign_memory(device: Device, ours: list[Running]) -> int:
    """Bytes of ``device`` used by programs other than the balancer's jobs ``ours`` on it.

    NVML reports all use: the processes it lists whose session is one of our jobs' are ours
    (when it lists none, our jobs are taken to use what they reserved). A file's
    ``memory_used`` is others' already.
    """
    if not device.used_includes_ours:
        return device.memory_used
    sessions = {r.pid for r in ours if r.pid is not None}
    if device.processes:
        mine = sum(size for pid, size in device.processes if _session(pid) in sessions)
    else:
        mine = min(device.memory_used, sum(r.reserved for r in ours))
    return max(0, device.memory_used - mine)


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _place_cpu(
    device: Device, cores: int | None, alone: bool, running: list[Running], policy: Policy
) -> Placement | None:
    """A CPU job: its own cores (all of them when alone), or None while they are taken."""
    count = len(device.cores) if alone else (cores or policy.cores_per_job)
    if count > len(device.cores):
        raise Unplaceable(f"it needs {count} cores; the balancer may use {len(device.cores)}")
    if any(r.alone for r in running) or (alone and running):
        return None
    taken = {c for r in running for c in r.cores}
    free = [c for c in device.cores if c not in taken]
    if len(free) < count:
        return None
    chosen = tuple(free[:count])
    threads = str(count)
    env = {
        "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    return Placement(("cpu",), None, 0, chosen, alone, env)
