"""`--train` through the CLI and profiles: the record's memory split and FLOPs against closed forms."""
import pytest
import yaml

from effprof.cli.main import main
from effprof.report.files import read_json

B, T, IN, OUT = 2, 4, 8, 16
MIB = 2**20
LINEAR = ["linear", "--tokens", str(T), "--in-dim", str(IN), "--out-dim", str(OUT), "--batch", str(B)]


def test_run_train_records_the_split_and_forward_backward_flops(tmp_path, fast, capsys):
    out = tmp_path / "r.json"
    assert main(["run", *LINEAR, *fast, "--train", "--json", str(out)]) == 0
    assert "wts/grad/opt/act" in capsys.readouterr().out  # the brief table shows the split of train rows
    (r,) = read_json(out)
    n = IN * OUT + OUT
    assert r["status"] == "ok" and r["train"] is True and r["exec_mode"] == "train-eager"
    assert r["params_trainable"] == n and r["params_frozen"] == 0
    assert r["train_weights_mib"] == pytest.approx(4 * n / MIB)
    assert r["train_grads_mib"] == pytest.approx(4 * n / MIB)
    assert r["train_optimizer_mib"] == pytest.approx((2 * 4 * n + 2 * 4) / MIB)  # AdamW: 2 fp32 states + step
    forward = 2 * B * T * IN * OUT
    assert r["gflops_forward"] == pytest.approx(forward / 1e9)
    assert r["gflops"] == pytest.approx(2 * forward / 1e9)  # weight gradient only: the input needs none
    assert r["train_saved_activations_mib"] == 0  # a Linear on an input saves only that input (not counted)
    assert r["train_loss"] == "mean of output" and r["train_optimizer"] == "adamw"
    assert r["latency_ms_median"] > 0


def test_sgd_and_refusals(tmp_path, fast, capsys):
    out = tmp_path / "r.json"
    assert main(["run", *LINEAR, *fast, "--train", "--optimizer", "sgd", "--json", str(out)]) == 0
    (r,) = read_json(out)
    assert r["train_optimizer_mib"] == pytest.approx(4 * (IN * OUT + OUT) / MIB)  # one momentum buffer
    assert main(["run", *LINEAR, *fast, "--train", "--optimizer", "lion"]) == 2
    assert main(["run", *LINEAR, *fast, "--grad-checkpointing"]) == 2
    assert main(["run", *LINEAR, *fast, "--train", "--grad-checkpointing"]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err  # a refusal only the step can make is a refused row in the table
    assert "--optimizer: 'lion'" in text and "needs --train" in text and "no module that supports it" in text
    assert "Traceback" not in text


def test_profile_rows_may_train(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({
        "options": {"device": "cpu", "min_time": 0.02, "warmup": 0, "batch": B},
        "rows": [{"component": "lora", "params": {"tokens": T, "in_dim": IN, "out_dim": OUT, "rank": 2}},
                 {"component": "lora", "params": {"tokens": T, "in_dim": IN, "out_dim": OUT, "rank": 2},
                  "options": {"train": True}, "label": "lora train"}]}))
    out = tmp_path / "p.json"
    assert main(["compare", str(profile), "--json", str(out)]) == 0
    infer, train = read_json(out)
    assert not infer.get("train") and train["train"] is True
    assert train["params_trainable"] == 2 * (IN + OUT)  # LoRA A and B only: r·(in + out)
    assert train["train_grads_mib"] == pytest.approx(4 * 2 * (IN + OUT) / MIB)


def test_breakdown_train_splits_the_step(fast, capsys):
    assert main(["breakdown", *LINEAR, "--device", "cpu", "--train"]) == 0
    text = capsys.readouterr().out
    for phase in ("forward", "backward", "optimizer", "step", "perf_counter"):
        assert phase in text
    assert main(["run", *LINEAR, "--device", "meta", "--train"]) == 2
    assert "--device meta only counts" in capsys.readouterr().err


def test_clip_lora_profile_rows():
    from effprof.core.profiles import load_profile
    from effprof.runner import RunOptions

    profile = load_profile("clip-lora", RunOptions(), {"device": "cpu"})
    rows = {c.label: c for c in profile.configs}
    assert profile.configs[profile.baseline].label == "full"
    assert all(c.options.batch == 64 and c.resolved()["preset"] == "vit-b-16" for c in profile.configs)
    for targets, name in (("projections", "lora-proj"), ("qv", "lora-qv")):
        for rank in (4, 8, 16, 32):
            values = rows[f"{name} r{rank}"].resolved()
            assert (values["adapt"], values["rank"], values["lora_targets"]) == ("lora", rank, targets)
    trained = [c.label for c in profile.configs if c.options.train]
    assert len(trained) == 10 and "projections" in trained
    assert rows["infer lora-qv r8 merged"].resolved()["merged"] and not rows["infer lora-qv r8 merged"].options.train


def test_train_graphs_is_one_line_on_cpu_and_clip_lora_falls_back_to_eager(capsys):
    from effprof.core.profiles import load_profile
    from effprof.runner import RunOptions

    assert main(["run", *LINEAR, "--device", "cpu", "--train", "--graphs"]) == 2
    err = capsys.readouterr().err
    assert "--graphs needs a CUDA device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    profile = load_profile("clip-lora", RunOptions(), {"device": "cpu"})
    assert not any(c.options.graphs for c in profile.configs)
    assert all("-> eager on cpu" in c.notes[0] for c in profile.configs)
