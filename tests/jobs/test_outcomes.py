"""What an exit means: finished, preempted, out of memory (more memory, then alone, then
failed), a busy workdir, lost, failed with the log's tail, and the limits."""

from __future__ import annotations

from jaxlm.jobs import Job, Retries
from jaxlm.jobs.outcomes import judge, log_tail
from jaxlm.jobs.queue import JobRecord

OOM = "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"


def record(**fields) -> JobRecord:
    return JobRecord("1", Job(command=("train",)), **{"need": 2**30, **fields})


def test_exits_and_what_follows():
    assert judge(0, "", record()).state == "finished"
    assert judge(143, "", record()).retry == {}
    assert judge(None, "", record()).outcome == "lost"
    busy = judge(2, "error: runs/x is being written by pid 7 on host h", record())
    assert busy.outcome == "busy" and busy.retry == {"delay": 5.0}
    failed = judge(137, "a\nb", record())
    assert failed.state == "failed" and failed.message == "exit 137 (SIGKILL): b\na\nb"
    assert judge(143, "", record(cancel_requested=True), cancelled=True).state == "cancelled"
    assert judge(0, "", record(), cancelled=True).state == "finished"  # it got there first


def test_out_of_memory_gets_more_memory_then_a_device_alone_then_fails():
    assert judge(1, OOM, record()).retry == {"memory_scale": 1.5}
    assert judge(1, OOM, record(memory_scale=1.5, history=["oom"])).retry == {"alone": True}
    last = judge(1, OOM, record(alone=True, history=["oom", "oom"]))
    assert last.state == "failed" and last.message.startswith("out of memory alone")
    # On CPU (no memory fraction to raise): alone at once. A job that already ran alone (its
    # need unknown) fails.
    on_cpu = record(placement={"devices": ["cpu"]})
    assert judge(1, OOM, on_cpu).retry == {"alone": True}
    unknown = record(need=None, placement={"devices": ["gpu0"], "alone": True})
    assert judge(1, "Out of memory", unknown).state == "failed"


def test_retries_are_limited():
    assert judge(143, "", record(history=["preempted"] * 3), Retries(preempted=3)).state == "failed"
    assert judge(None, "", record(history=["lost"]), Retries(lost=1)).message.endswith(
        "2 times: giving up"
    )


def test_the_tail_is_this_attempts_part_of_the_log(tmp_path):
    log = tmp_path / "1.log"
    log.write_text("old attempt\n" + "".join(f"line {i}\n" for i in range(30)))
    assert log_tail(log, offset=len("old attempt\n"), lines=3) == "line 27\nline 28\nline 29"
    assert log_tail(tmp_path / "missing.log") == ""
