"""jaxlm.train.resources: memory readings, the peak table, the CPU's measured peak, the MFU."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from jaxlm.train import resources


def test_the_peak_table_knows_the_usual_accelerators_by_their_device_kind():
    assert resources.peak_flops("NVIDIA H100 80GB HBM3", half=True) == 989e12
    assert resources.peak_flops("NVIDIA H100 PCIe", half=True) == 756e12  # not the SXM's
    assert resources.peak_flops("NVIDIA H200", half=False) == 495e12
    assert resources.peak_flops("NVIDIA A100-SXM4-80GB", half=True) == 312e12
    assert resources.peak_flops("TPU v4", half=False) == 275e12
    assert resources.peak_flops("TPU v5 lite", half=True) == 197e12
    assert resources.peak_flops("Some New Chip", half=True) is None
    for _, (sixteen, thirty_two) in resources.PEAK_FLOPS:
        assert sixteen >= thirty_two > 1e13


def test_memory_is_the_processes_resident_set_on_the_cpu():
    before = resources.memory()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = resources.memory()
    assert after["rss_peak_bytes"] >= after["rss_bytes"] > 0
    assert after["rss_bytes"] - before["rss_bytes"] > 32 * 2**20
    del block
    stats = jax.local_devices()[0].memory_stats() or {}
    assert ("device_memory_bytes" in after) == ("bytes_in_use" in stats)


def test_the_cpu_peak_is_measured_once_and_shared_by_the_cpu_devices():
    t0 = time.perf_counter()
    first = resources.cpu_matmul_peak()
    assert time.perf_counter() - t0 < 5.0  # a fraction of a second, on an idle machine
    t0 = time.perf_counter()
    assert resources.cpu_matmul_peak() == first and time.perf_counter() - t0 < 0.01  # cached
    assert first > 1e8
    peak, whence = resources.device_peak("float32")
    assert peak == pytest.approx(first / jax.local_device_count()) and "CPU" in whence
    assert resources.device_peak("bfloat16", configured=2e12) == (
        2e12,
        "config.monitor.peak_flops",
    )


def test_the_mfu_is_the_achieved_flops_over_the_peak():
    metrics = resources.meter(flops=3e9, peak=1e12)
    assert metrics(100.0)["mfu"] == pytest.approx(0.3)
    assert "mfu" not in metrics(None)  # no rate yet
    assert "mfu" not in resources.meter(None, 1e12)(100.0)  # a recurrent model: no FLOPs
    assert "mfu" not in resources.meter(3e9, None)(100.0)  # an unknown device
