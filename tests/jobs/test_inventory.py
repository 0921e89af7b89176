"""Inventories: a file of fake GPUs (bad ones named by file and field), CPU cores, NVML."""

from __future__ import annotations

import json
import os

import pytest

from jaxlm.errors import JobError
from jaxlm.jobs import Inventory
from tests.jobs.fakes import GiB


def write(tmp_path, data) -> str:
    path = tmp_path / "inv.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_file_describes_gpus(tmp_path):
    path = write(
        tmp_path,
        {
            "gpus": [
                {"index": 0, "name": "fake", "memory_total": "16GiB"},
                {"index": 1, "memory_total": 8 * GiB, "memory_used": "1GiB", "utilization": 0.5},
            ]
        },
    )
    inventory = Inventory(path)
    first, second = inventory.devices()
    assert inventory.kind == "gpu" and (first.key, first.name, first.memory_total) == (
        "gpu0",
        "fake",
        16 * GiB,
    )
    assert (second.memory_used, second.utilization) == (GiB, 0.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not JSON"),
        ({"tpus": []}, 'expected {"gpus": \\[...\\]}'),
        ({"gpus": [{"index": 0}]}, r"gpus\[0\]: memory_total is required"),
        ({"gpus": [{"memory_total": "big"}]}, r"gpus\[0\].memory_total: expected a size"),
        ({"gpus": [{"memory_total": 1, "utilisation": 1}]}, "unknown field 'utilisation'"),
        ({"gpus": [{"memory_total": 1, "utilization": 50}]}, r"utilization: expected .* 0 to 1"),
        ({"gpus": [{"memory_total": 1}, {"memory_total": 1}]}, "the same index"),
        ({"cpus": 0}, "cpus: expected a count"),
    ],
)
def test_a_bad_file_is_named_with_its_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(JobError, match=message) as e:
        Inventory(path)
    assert str(e.value).startswith(f"inventory {path}")


def test_cpu_cores_from_the_affinity_or_a_file(tmp_path):
    (cpu,) = Inventory("cpu").devices()
    assert cpu.kind == "cpu" and cpu.cores == tuple(sorted(os.sched_getaffinity(0)))
    assert cpu.memory_total > 0
    (listed,) = Inventory(write(tmp_path, {"cpus": 3})).devices()
    assert listed.cores == (0, 1, 2)
    with pytest.raises(JobError, match="no file, and not auto, nvml or cpu"):
        Inventory(str(tmp_path / "missing.json"))


def test_nvml_without_a_gpu_is_one_line_and_auto_falls_back_to_the_cores():
    try:
        import pynvml

        pynvml.nvmlInit()
        pytest.skip("this machine has a GPU")
    except ImportError:
        pass
    except Exception:  # NVMLError: no driver
        pass
    with pytest.raises(JobError, match="inventory nvml: "):
        Inventory("nvml")
    assert Inventory("auto").kind == "cpu"
