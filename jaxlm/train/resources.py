"""What a run uses: device and host memory, and its model FLOPs utilisation (MFU).

Memory comes from ``Device.memory_stats()`` where the backend keeps it (GPU, TPU: bytes in use
and at peak) and from the process itself everywhere (resident set and its peak, from
``/proc/self/status``, else ``resource.getrusage``). The MFU is the compiled step's FLOPs (XLA's
cost analysis, per device: :func:`jaxlm.train.plan.report`) times steps per second of training
time, over the device's peak: a table of dense peaks by device kind (:data:`PEAK_FLOPS`), or on
the CPU this CPU's matmul peak, measured once per process in a fraction of a second. What this
adds to ``memory_stats`` and the cost analysis: the two put together per log line, and a peak
for the CPU, which JAX does not know.
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per chip, (16-bit, float32), by a substring of ``device.device_kind``; the
# first match wins, so longer names come first. GPUs' float32 is the TF32 tensor-core peak,
# which XLA's default matmul precision uses for float32 there; TPUs multiply float32 in bfloat16
# passes at the default precision, so both are the bfloat16 peak. (NVIDIA's data sheets, SXM
# parts; Google Cloud's TPU pages.)
PEAK_FLOPS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("H200", (989e12, 495e12)),
    ("H100 PCIe", (756e12, 378e12)),
    ("H100", (989e12, 495e12)),
    ("A100", (312e12, 156e12)),
    ("TPU v6 lite", (918e12, 918e12)),
    ("TPU v6e", (918e12, 918e12)),
    ("TPU v5p", (459e12, 459e12)),
    ("TPU v5 lite", (197e12, 197e12)),
    ("TPU v5e", (197e12, 197e12)),
    ("TPU v4", (275e12, 275e12)),
    ("TPU v3", (123e12, 123e12)),
    ("TPU v2", (45e12, 45e12)),
)


def memory(devices: Sequence[Any] | None = None) -> dict[str, float]:
    """Memory in use now and at peak: the devices' (the largest over this process's devices)
    where the backend reports it, and this process's resident set.

    Args:
      devices: the devices to ask (default: this process's).

    Returns:
      ``rss_bytes`` and ``rss_peak_bytes`` always; ``device_memory_bytes`` and
      ``device_memory_peak_bytes`` where ``memory_stats()`` has them (not on the CPU).

    Example:
      >>> m = memory()
      >>> m["rss_peak_bytes"] >= m["rss_bytes"] > 0
      True
    """
    out = _rss()
    in_use, peak = [], []
    for device in jax.local_devices() if devices is None else devices:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without it raises instead of returning None
            stats = {}
        if "bytes_in_use" in stats:
            in_use.append(stats["bytes_in_use"])
            peak.append(stats.get("peak_bytes_in_use", stats["bytes_in_use"]))
    if in_use:
        out["device_memory_bytes"] = float(max(in_use))
        out["device_memory_peak_bytes"] = float(max(peak))
    return out


def _rss() -> dict[str, float]:
    """This process's resident set and its peak (VmRSS, VmHWM), in bytes."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        kib = {k: float(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}
        return {"rss_bytes": kib["VmRSS"] * 1024, "rss_peak_bytes": kib["VmHWM"] * 1024}
    except (OSError, KeyError, ValueError):  # not Linux: the peak alone (KiB there too)
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return {"rss_bytes": peak, "rss_peak_bytes": peak}


def peak_flops(device_kind: str, half: bool) -> float | None:
    """A device's dense peak FLOP/s from :data:`PEAK_FLOPS`.

    Args:
      device_kind: ``jax.devices()[0].device_kind``, e.g. ``"NVIDIA H100 80GB HBM3"``.
      half: 16-bit compute (bfloat16, float16), else float32.

    Returns:
      FLOP/s, or None for a kind the table does not know.

    Example:
      >>> peak_flops("NVIDIA H100 80GB HBM3", half=True), peak_flops("cpu", half=True)
      (989000000000000.0, None)
    """
    for name, (sixteen, thirty_two) in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return sixteen if half else thirty_two
    return None


def cpu_matmul_peak(dtype: str = "float32", size: int = 512, seconds: float = 0.15) -> float:
    """This CPU's matmul FLOP/s, measured once per process: the best of repeated ``size`` x
    ``size`` products on the first CPU device (all its threads) for about ``seconds``.

    Args:
      dtype: the compute dtype's name (``"float32"``, ``"bfloat16"``).
      size: the matrices' side.
      seconds: how long to measure (compilation apart).

    Returns:
      FLOP/s (``2 size^3`` per product over its best time).

    Example:
      >>> cpu_matmul_peak() > 1e8
      True
    """
    return _measured_peak(str(dtype), int(size), float(seconds))


@functools.cache
def _measured_peak(dtype: str, size: int, seconds: float) -> float:
    cpu = jax.devices("cpu")[0]
    with jax.set_mesh(jax.sharding.Mesh(np.array([cpu]), ("one",))):  # whatever mesh is set
        x = jax.device_put(jnp.ones((size, size), dtype), cpu)
        matmul = jax.jit(lambda a: a @ a)
        jax.block_until_ready(matmul(x))
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end or best == float("inf"):
            t0 = time.perf_counter()
            jax.block_until_ready(matmul(x))
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def device_peak(precision: str, configured: float = 0.0) -> tuple[float | None, str]:
    """The peak FLOP/s of one of this process's devices for a run's precision, and whence.

    Args:
      precision: ``config.precision`` (its compute dtype picks the 16-bit or float32 peak).
      configured: ``config.monitor.peak_flops`` (> 0: used as it is).

    Returns:
      ``(FLOP/s per device, where it came from)``; ``(None, why)`` for an unknown kind. On the
      CPU the measured peak is the whole CPU's, shared by every CPU device of the process, so
      it is divided among them.

    Example:
      >>> device_peak("float32", configured=1e12)
      (1000000000000.0, 'config.monitor.peak_flops')
    """
    if configured > 0:
        return configured, "config.monitor.peak_flops"
    from jaxlm.precision import Policy

    compute = jnp.dtype(Policy.from_string(precision).compute_dtype)
    half = compute.itemsize == 2
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        shared = cpu_matmul_peak(compute.name) / jax.local_device_count()
        return shared, f"this CPU's measured {compute.name} matmul peak"
    peak = peak_flops(device.device_kind, half)
    if peak is None:
        return None, f"no peak known for {device.device_kind!r} (set config.monitor.peak_flops)"
    return peak, f"{device.device_kind} dense {'16-bit' if half else 'float32'} peak"


def meter(flops: float | None, peak: float | None) -> Callable[[float | None], dict[str, float]]:
    """The resource metrics of a log line, from the training rate at that line.

    Args:
      flops: the compiled step's FLOPs per device (None: no MFU, e.g. a recurrent model, whose
        scanned loop XLA's cost analysis counts once rather than per time step).
      peak: FLOP/s per device (:func:`device_peak`; None: no MFU).

    Returns:
      ``metrics(steps_per_second) -> {...}``: :func:`memory`'s figures and, with a rate,
      ``mfu`` (achieved FLOP/s per device over the peak).

    Example:
      >>> metrics = meter(flops=2e9, peak=1e12)(steps_per_second=100.0)
      >>> metrics["mfu"], metrics["rss_bytes"] > 0
      (0.2, True)
    """

    def metrics(steps_per_second: float | None) -> dict[str, float]:
        out = memory()
        if flops and peak and steps_per_second:
            out["mfu"] = flops * steps_per_second / peak
        return out

    return metrics
