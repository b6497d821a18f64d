"""Energy per token by phase (`effprof.trackers.generation.phase_energy`) against a fake NVML whose energy
counter is the board's idle power × time plus a scripted number of joules for every prefill and every decode
call: J/token raw and above idle must come out as those scripts say."""
import time
from types import SimpleNamespace

import pytest
from test_nvml import FakeNvml

import effprof.measure.nvml as nvml_module
from effprof.trackers import generation

RealSampler = nvml_module.NvmlSampler

IDLE_W = 80.0
PREFILL_J, DECODE_J = 3.0, 7.5   # joules each call adds above idle


class EnergyNvml(FakeNvml):
    """test_nvml's fake board at idle power; its energy counter (mJ) grows at IDLE_W plus what `work` added."""

    def __init__(self):
        super().__init__(power_mw=(int(IDLE_W * 1e3),), temps=(40,))
        self.t0 = time.perf_counter()
        self.work_mj = 0.0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return (time.perf_counter() - self.t0) * IDLE_W * 1e3 + self.work_mj


class FakeGenerator:
    """`first_token` / `decode_tokens` as the LM scenario's generator has them; each call spends its joules."""

    def __init__(self, nvml, new_tokens):
        self.nvml, self.new_tokens = nvml, new_tokens
        self.prefills = self.decodes = 0

    def first_token(self, prompt):
        self.prefills += 1
        self.nvml.work_mj += PREFILL_J * 1e3
        time.sleep(0.002)
        return "token"

    def decode_tokens(self, token, start, count):
        assert count == self.new_tokens - 1
        self.decodes += 1
        self.nvml.work_mj += DECODE_J * 1e3
        time.sleep(0.002)
        return [token] * count


@pytest.fixture
def fake_board(monkeypatch):
    nvml = EnergyNvml()
    monkeypatch.setattr(nvml_module, "_IDLE_ONCE", {})
    monkeypatch.setattr(nvml_module, "NvmlSampler",
                        lambda device, **kw: RealSampler(0, nvml=nvml, **kw))
    monkeypatch.setattr(generation, "ENERGY_S", 0.05)
    monkeypatch.setattr("torch.cuda.synchronize", lambda device=None: None)
    return nvml


def test_phase_energy_per_token_raw_and_above_idle(fake_board):
    prompt_tokens, batch, new_tokens = 640, 2, 33
    run = SimpleNamespace(record={"sequence_tokens": prompt_tokens}, items_per_call=prompt_tokens,
                          options=SimpleNamespace(batch=batch), device="cuda:0")
    gen = FakeGenerator(fake_board, new_tokens)
    out = generation.phase_energy(run, gen, ("pixels", "ids", gen))
    # every phase repeats for at least ENERGY_S and at least 3 calls (plus the one first token it decodes from)
    assert gen.prefills >= 4 and gen.decodes >= 3
    assert out["energy_prefill_above_idle_j_per_token"] == pytest.approx(PREFILL_J / (prompt_tokens * batch), rel=0.02)
    assert out["energy_decode_above_idle_j_per_token"] == pytest.approx(DECODE_J / ((new_tokens - 1) * batch), rel=0.02)
    # raw = above idle + idle power x the phase's duration, which is at least ENERGY_S and well under a second
    repeats = {"prefill": gen.prefills - 1, "decode": gen.decodes}   # the first token is decoded from, unmeasured
    for phase, tokens in (("prefill", prompt_tokens * batch), ("decode", (new_tokens - 1) * batch)):
        per_token = out[f"energy_{phase}_j_per_token"] - out[f"energy_{phase}_above_idle_j_per_token"]
        idle_j = per_token * tokens * repeats[phase]
        assert IDLE_W * 0.05 * 0.95 <= idle_j < IDLE_W * 1.0
    assert "energy-counter" in out["energy_phase_method"]


def test_phase_energy_without_nvml_says_why(monkeypatch):
    class NoDriver(EnergyNvml):
        def nvmlInit(self):
            raise RuntimeError("Driver Not Loaded")

    monkeypatch.setattr(nvml_module, "NvmlSampler",
                        lambda device, **kw: RealSampler(0, nvml=NoDriver(), **kw))
    run = SimpleNamespace(record={"sequence_tokens": 8}, items_per_call=8, options=SimpleNamespace(batch=1),
                          device="cuda:0")
    gen = FakeGenerator(EnergyNvml(), 4)
    out = generation.phase_energy(run, gen, ("ids", gen))
    assert set(out) == {"energy_phase_note"} and "Driver Not Loaded" in out["energy_phase_note"]
