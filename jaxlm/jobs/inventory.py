"""The devices jobs run on: GPUs through NVML, this machine's CPU cores, or a JSON file.

Each look is fresh (memory in use and utilization change as jobs run), so a balancer asks
:meth:`Inventory.devices` before each placement. A file describes fake GPUs for tests and
dry runs of a schedule::

    {"gpus": [{"index": 0, "name": "fake", "memory_total": "16GiB"},
              {"index": 1, "memory_total": "16GiB", "memory_used": "2GiB", "utilization": 0.5}]}

or CPU cores: ``{"cpus": [0, 1]}`` (or a count, ``{"cpus": 2}``). In a file, ``memory_used`` is
what other programs use (the balancer adds its own jobs' share); through NVML it is what the
GPU reports, the balancer's jobs included, and the processes NVML lists tell them apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from jaxlm.errors import JobError
from jaxlm.jobs.queue import parse_size

CUDA_CONTEXT_BYTES = 512 * 2**20  # what a process's CUDA context takes outside JAX's pool


@dataclasses.dataclass(frozen=True)
class Device:
    """One device as it is now.

    Attributes:
      kind: ``"gpu"`` or ``"cpu"`` (the whole machine's cores as one device).
      index: the GPU's index in PCI bus order (what ``CUDA_VISIBLE_DEVICES`` names, with
        ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); 0 for the CPU.
      name: the model, for the status table.
      memory_total: bytes.
      memory_used: bytes in use now (see the module's note on whose).
      utilization: the fraction of time it was busy lately, 0 to 1.
      processes: ``(pid, bytes)`` of the processes using it, when known.
      cores: the CPU cores jobs may use (CPU only).
      overhead: bytes each process costs outside the memory fraction it is given (a CUDA
        context).
      used_includes_ours: whether ``memory_used`` counts the balancer's own jobs.
    """

    kind: str
    index: int = 0
    name: str = ""
    memory_total: int = 0
    memory_used: int = 0
    utilization: float = 0.0
    processes: tuple[tuple[int, int], ...] = ()
    cores: tuple[int, ...] = ()
    overhead: int = 0
    used_includes_ours: bool = False

    @property
    def key(self) -> str:
        """``"gpu0"``, ``"gpu1"``, ... or ``"cpu"``."""
        return f"gpu{self.index}" if self.kind == "gpu" else "cpu"


class Inventory:
    """Where the devices come from: ``"nvml"``, ``"cpu"``, a JSON file, or ``"auto"``.

    Args:
      source: ``"auto"`` (NVML's GPUs when there are any, else the CPU cores), ``"nvml"``,
        ``"cpu"``, or the path of a JSON file.

    Raises:
      JobError: NVML was asked for and has no GPU, or the file is unreadable or malformed.

    Example:
      >>> import tempfile
      >>> path = Path(tempfile.mkdtemp()) / "gpus.json"
      >>> _ = path.write_text('{"gpus": [{"index": 0, "memory_total": "16GiB"}]}')
      >>> [(d.key, d.memory_total) for d in Inventory(str(path)).devices()]
      [('gpu0', 17179869184)]
      >>> Inventory("cpu").kind
      'cpu'
    """

    def __init__(self, source: str = "auto"):
        self.source = source
        if source == "auto":
            self.source = "nvml" if _nvml_devices(required=False) else "cpu"
        elif source not in ("nvml", "cpu") and not Path(source).is_file():
            raise JobError(f"inventory: {source} is no file, and not auto, nvml or cpu")
        self.kind = self.devices()[0].kind

    def devices(self) -> list[Device]:
        """The devices as they are now."""
        if self.source == "nvml":
            return _nvml_devices(required=True)
        if self.source == "cpu":
            return [cpu_device()]
        return read_file(self.source)


def cpu_device() -> Device:
    """This machine as one device: the cores this process may use, its memory and load."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    total = used = 0
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(info["MemTotal"].split()[0]) * 1024
        used = total - int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    load = min(1.0, os.getloadavg()[0] / max(1, len(cores)))
    return Device("cpu", 0, "cpu", total, used, load, cores=cores, used_includes_ours=True)


def _nvml_devices(required: bool) -> list[Device]:
    """The GPUs NVML sees (those in this process's ``CUDA_VISIBLE_DEVICES``, if it is set)."""
    try:
        import pynvml
    except ImportError:
        if required:
            raise JobError("inventory nvml: pip install nvidia-ml-py (import pynvml)") from None
        return []
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as e:
        if required:
            raise JobError(f"inventory nvml: no GPU found through NVML ({e})") from None
        return []
    visible = _visible_indices(count)
    devices = []
    for i in visible:
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            busy = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except pynvml.NVMLError:
            busy = 0.0
        try:
            running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            processes = tuple((p.pid, int(p.usedGpuMemory or 0)) for p in running)
        except pynvml.NVMLError:
            processes = ()
        name = pynvml.nvmlDeviceGetName(handle)
        devices.append(
            Device(
                "gpu",
                i,
                name.decode() if isinstance(name, bytes) else str(name),
                int(memory.total),
                int(memory.used),
                busy,
                processes,
                overhead=CUDA_CONTEXT_BYTES,
                used_includes_ours=True,
            )
        )
    if required and not devices:
        raise JobError("inventory nvml: NVML lists no GPU this process may use")
    return devices


def _visible_indices(count: int) -> list[int]:
    """The NVML indices ``CUDA_VISIBLE_DEVICES`` (numbers) leaves this process; all if unset."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return list(range(count))
    try:
        return [int(i) for i in text.split(",") if i.strip() and 0 <= int(i) < count]
    except ValueError:  # UUIDs: left to the jobs
        return list(range(count))


def read_file(path: str | os.PathLike) -> list[Device]:
    """The devices a JSON inventory file describes (see the module's docstring).

    Raises:
      JobError: the file cannot be read, is not JSON, or a field is wrong (named).
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise JobError(f"inventory {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise JobError(f"inventory {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or set(data) - {"gpus", "cpus"} or len(data) != 1:
        raise JobError(f'inventory {path}: expected {{"gpus": [...]}} or {{"cpus": ...}}')
    if "cpus" in data:
        cpus = data["cpus"]
        if isinstance(cpus, int) and not isinstance(cpus, bool) and cpus > 0:
            cpus = list(range(cpus))
        if not isinstance(cpus, list) or not cpus or not all(_natural(c) for c in cpus):
            raise JobError(f"inventory {path}: cpus: expected a count or a list of core numbers")
        return [dataclasses.replace(cpu_device(), cores=tuple(sorted(set(cpus))))]
    gpus = data["gpus"]
    if not isinstance(gpus, list) or not gpus:
        raise JobError(f"inventory {path}: gpus: expected a non-empty list")
    devices = [_gpu_from(entry, f"inventory {path}: gpus[{n}]") for n, entry in enumerate(gpus)]
    indices = [d.index for d in devices]
    if len(set(indices)) != len(indices):
        raise JobError(f"inventory {path}: gpus: two GPUs have the same index")
    return devices


_GPU_FIELDS = {"index", "name", "memory_total", "memory_used", "utilization", "overhead"}


def _gpu_from(entry: Any, where: str) -> Device:
    if not isinstance(entry, dict):
        raise JobError(f"{where}: expected an object")
    unknown = sorted(set(entry) - _GPU_FIELDS)
    if unknown:
        raise JobError(f"{where}: unknown field {unknown[0]!r}; known: {sorted(_GPU_FIELDS)}")
    if "memory_total" not in entry:
        raise JobError(f"{where}: memory_total is required")
    index = entry.get("index", 0)
    if not _natural(index):
        raise JobError(f"{where}.index: expected a number from 0, got {index!r}")
    busy = entry.get("utilization", 0.0)
    if not isinstance(busy, int | float) or not 0 <= busy <= 1:
        raise JobError(f"{where}.utilization: expected a number from 0 to 1, got {busy!r}")
    used = entry.get("memory_used", 0)
    overhead = entry.get("overhead", 0)
    return Device(
        "gpu",
        index,
        str(entry.get("name", "")),
        parse_size(entry["memory_total"], f"{where}.memory_total"),
        0 if used in (0, "0") else parse_size(used, f"{where}.memory_used"),
        float(busy),
        overhead=0 if overhead in (0, "0") else parse_size(overhead, f"{where}.overhead"),
    )


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
