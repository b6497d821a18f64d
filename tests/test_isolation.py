"""A failed row never spoils the next (effprof.measure.modes.recover, effprof.launch.inline): a failing CUDA-graph
capture is injected in the middle of a profile on CPU (the capture raises and leaves a state flag set, as a failed
capture leaves the CUDA generator in capture mode), and every later row must be measured: in this process when the
state can be put back, in a fresh worker process when it cannot."""
import os

import pytest
import yaml

import effprof.runner as runner
from effprof.cli.main import main
from effprof.measure import modes
from effprof.report.files import read_json
from effprof.report.table import footer

POISON = "Offset increment outside graph capture encountered unexpectedly."


def profile(tmp_path, batches=(1, 2, 3, 4, 5)):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "options": {"device": "cpu", "min_time": 0.02, "warmup": 0, "max_cv": 1},
        "rows": [{"component": "linear", "params": {"tokens": 4, "in_dim": 8, "out_dim": 8},
                  "options": {"batch": b}, "label": f"row{b}"} for b in batches]}))
    return path


@pytest.fixture
def failing_capture(monkeypatch):
    """Row `batch == 3` fails its capture and leaves `state["capturing"]` set; while it is set every later
    execution fails as the real process did (the generator's error)."""
    state = {"capturing": False, "recovered": 0, "fit": True}
    real = runner.execution_mode

    def execution_mode(built, input_sets, opts, device):
        if state["capturing"]:
            raise RuntimeError(POISON)
        if opts.batch == 3:
            state["capturing"] = True
            raise modes.GraphCaptureError("CUDA graph capture failed: RuntimeError: operation not permitted "
                                          "when stream is capturing")
        return real(built, input_sets, opts, device)

    def recover(device, compiled=False):
        state["recovered"] += 1
        if state["fit"]:
            state["capturing"] = False  # what modes.recover does: the capture prologue/epilogue of a probe graph
            return None
        return f"after the failure: RuntimeError: {POISON}"

    monkeypatch.setattr(runner, "execution_mode", execution_mode)
    monkeypatch.setattr(modes, "recover", recover)
    return state


def test_without_recovery_a_failed_capture_spoils_every_later_row(tmp_path, failing_capture, monkeypatch):
    """The harness reproduces the bug when nothing puts the state back (the check of the test itself)."""
    monkeypatch.setattr(runner, "recover_after", lambda config: None)
    out = tmp_path / "r.json"
    assert main(["compare", str(profile(tmp_path)), "--json", str(out)]) == 1
    assert [r["status"] for r in read_json(out)] == ["ok", "ok", "error", "error", "error"]


def test_a_failed_capture_is_put_back_and_the_later_rows_run_here(tmp_path, failing_capture):
    out = tmp_path / "r.json"
    assert main(["compare", str(profile(tmp_path)), "--json", str(out)]) == 1
    records = read_json(out)
    assert [r["status"] for r in records] == ["ok", "ok", "error", "ok", "ok"]
    assert "capture failed" in records[2]["error"] and failing_capture["recovered"] == 1
    assert all(r["latency_ms_median"] > 0 for r in records if r["status"] == "ok")
    assert not any(r.get("fresh_process") or r.get("process_unfit") for r in records)


def test_when_the_state_cannot_be_put_back_the_later_rows_run_in_a_fresh_process(tmp_path, failing_capture, capsys):
    failing_capture["fit"] = False
    out = tmp_path / "r.json"
    assert main(["compare", str(profile(tmp_path)), "--json", str(out)]) == 1
    records = read_json(out)
    assert [r["label"] for r in records] == ["row1", "row2", "row3", "row4", "row5"]
    assert [r["status"] for r in records] == ["ok", "ok", "error", "ok", "ok"]
    assert POISON in records[2]["process_unfit"]
    moved = records[3:]
    assert all(r["latency_ms_median"] > 0 and "row3 left the first process unfit" in r["fresh_process"] for r in moved)
    assert all(r["worker_pid"] not in (None, os.getpid()) for r in moved) and [r["row"] for r in moved] == [3, 4]
    text = capsys.readouterr()
    assert "row4, row5: measured in a fresh worker process" in text.out + text.err
    assert "row3: left its process unfit" in footer(records)


def test_recover_on_cpu_resets_dynamo_after_a_compile_failure(monkeypatch):
    import torch

    import torch._dynamo

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    assert modes.recover(torch.device("cpu")) is None and resets == []
    assert modes.recover(torch.device("cpu"), compiled=True) is None and resets == [1]


POISONING_COMPONENT = '''
import torch
from effprof.measure import modes


def poisons():
    """Its call fails, and the process it ran in cannot be put back (modes.recover says so)."""
    modes.recover = lambda device, compiled=False: "after the failure: RuntimeError: poisoned for the test"

    class Fails(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("capture failed (injected)")

    return Fails(), lambda batch: (torch.zeros(batch, 4),)
'''


def test_a_pool_worker_left_unfit_is_replaced_before_the_next_row(tmp_path):
    """In a worker pool (the --isolate path without isolation here: one worker for every row), a row that leaves
    its worker unfit ends that worker, and the next row runs in a fresh one."""
    (tmp_path / "poison.py").write_text(POISONING_COMPONENT)
    linear = {"component": "linear", "params": {"tokens": 4, "in_dim": 8, "out_dim": 8}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "options": {"device": "cpu", "min_time": 0.02, "warmup": 0, "max_cv": 1},
        "rows": [dict(linear, label="first"), {"component": "poison.py:poisons", "label": "poisons"},
                 dict(linear, label="after")]}))
    out = tmp_path / "r.json"
    assert main(["compare", str(path), "--workers", "1", "--json", str(out)]) == 1
    first, poisoned, after = read_json(out)
    assert [first["status"], poisoned["status"], after["status"]] == ["ok", "error", "ok"]
    assert "poisoned for the test" in poisoned["process_unfit"] and after["latency_ms_median"] > 0
    assert first["worker_pid"] == poisoned["worker_pid"] != after["worker_pid"]
