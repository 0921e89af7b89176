"""Placement without processes: fractions, fit, least wait (measured utilization and remaining
work), several GPUs, devices kept free, CPU cores."""

from __future__ import annotations

import pytest

from jaxlm.jobs.balancer import Policy, Running, Unplaceable, memory_fraction, place
from jaxlm.jobs.inventory import Device
from tests.jobs.fakes import GiB


def two(**fields) -> list[Device]:
    return [Device("gpu", i, memory_total=16 * GiB, **fields) for i in (0, 1)]


def test_the_fraction_holds_the_need_and_its_headroom():
    assert memory_fraction(8 * GiB, 16 * GiB, 0.1) == 0.55
    assert memory_fraction(1, 16 * GiB, 0.1) == 0.001  # rounded up, never down to 0
    p = place(8 * GiB, devices=two(), running=[])
    assert p.fraction == 0.55 and p.reserved == int(0.55 * 16 * GiB)
    assert p.env == {
        "CUDA_VISIBLE_DEVICES": "0",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.550",
    }


def test_a_job_goes_where_it_would_wait_least():
    devices = two()
    on0 = Running(("gpu0",), reserved=GiB, remaining=100.0)
    on1 = Running(("gpu1",), reserved=GiB, remaining=500.0)
    assert place(GiB, devices=devices, running=[on0, on1]).devices == ("gpu0",)
    # A GPU measured busy (by others) waits longer: 0.8 busy makes 100 s of work count as 2000.
    busy = [Device("gpu", 0, memory_total=16 * GiB, utilization=0.8), devices[1]]
    assert place(GiB, devices=busy, running=[on0, on1]).devices == ("gpu1",)


def test_a_job_goes_only_where_it_fits():
    on0 = Running(("gpu0",), reserved=12 * GiB, remaining=1.0)
    on1 = Running(("gpu1",), reserved=4 * GiB, remaining=1000.0)
    assert place(6 * GiB, devices=two(), running=[on0, on1]).devices == ("gpu1",)
    assert place(12 * GiB, devices=two(), running=[on0, on1]) is None  # wait
    # Memory other programs use (a file's memory_used) counts against it too.
    used = two(memory_used=10 * GiB)
    assert place(6 * GiB, devices=used, running=[]) is None
    with pytest.raises(Unplaceable, match="the largest GPU holds 15.2 GiB"):
        place(15 * GiB, devices=two(), running=[])


def test_several_gpus_alone_and_kept_free():
    on1 = Running(("gpu1",), reserved=GiB, remaining=10.0)
    wide = place(2 * GiB, gpus=2, devices=two(), running=[on1])
    assert wide.devices == ("gpu0", "gpu1") and wide.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    by_default = place(GiB, devices=two(), running=[], policy=Policy(gpus_per_job=2))
    assert by_default.devices == ("gpu0", "gpu1")
    with pytest.raises(Unplaceable, match="needs 3 GPUs"):
        place(GiB, gpus=3, devices=two(), running=[])
    alone = place(GiB, alone=True, devices=two(), running=[on1])
    assert alone.devices == ("gpu0",) and alone.fraction == 0.95 and alone.alone
    assert place(GiB, devices=two(), running=[alone.running(5.0)]).devices == ("gpu1",)
    assert place(None, devices=two(), running=[]).alone  # unknown need: alone
    # A retry with more memory than a GPU's largest share gets a GPU alone.
    grown = place(10 * GiB, memory_scale=1.5, devices=two(), running=[on1])
    assert grown.devices == ("gpu0",) and grown.alone and grown.fraction == 0.95
    blocked = frozenset({"gpu0"})
    assert place(GiB, devices=two(), running=[on1], blocked=blocked).devices == ("gpu1",)


def test_cpu_jobs_get_free_cores():
    cpu = [Device("cpu", cores=(0, 1, 2, 3))]
    first = place(None, cores=2, devices=cpu, running=[])
    assert first.cores == (0, 1) and first.env["OMP_NUM_THREADS"] == "2"
    second = place(None, devices=cpu, running=[first.running()], policy=Policy(cores_per_job=1))
    assert second.cores == (2,) and second.env["JAX_PLATFORMS"] == "cpu"
    assert place(None, cores=3, devices=cpu, running=[first.running()]) is None
    assert place(None, alone=True, devices=cpu, running=[]).cores == (0, 1, 2, 3)
    with pytest.raises(Unplaceable, match="needs 8 cores"):
        place(None, cores=8, devices=cpu, running=[])
