"""Projector parameter counts against independent formulas, FLOPs, shapes and checkpoint loading."""
import json

import pytest
import torch

from effprof import create
from effprof.cli.main import main
from effprof.measure.flops import count_flops
from effprof.runner import count_params

I, O, T = 64, 96, 16  # small dims: in, out, tokens (a 4×4 grid for ldp)


def ldp_formula(i, o):
    mlp = i * o + o + o * o + o
    squeeze = o // 4  # make_divisible(o // 4, 8) for o a multiple of 32
    block = 9 * o + 2 * o + (o * squeeze + squeeze) + (squeeze * o + o) + o * o + 2 * o
    return mlp + 2 * block


FORMULAS = {
    "linear": (lambda r: I * O + O, {}),
    "lowrank": (lambda r: I * r + r * O + O, {"rank": 8}),
    "mlp": (lambda r: I * O + O + O * O + O, {}),
    "gated": (lambda r: 2 * (I * O + O), {}),
    "lora": (lambda r: I * O + O + r * (I + O), {"rank": 4}),
    "ldp": (lambda r: ldp_formula(I, O), {}),
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_param_counts_match_formulas(name):
    formula, extra = FORMULAS[name]
    built = create(name, tokens=T, in_dim=I, out_dim=O, **extra)
    total, trainable = count_params(built.module)
    assert total == formula(extra.get("rank"))
    if name == "lora":
        assert trainable == extra["rank"] * (I + O)
    else:
        assert trainable == total
    y = built.call(built.make_inputs(2))
    tokens_out = 4 if name == "ldp" else T  # 4×4 grid -> 2×2 after the stride-2 block
    assert y.shape == (2, tokens_out, O) and built.info["tokens_out"] == tokens_out


def test_published_llava_sizes():
    # LLaVA-1.5 mlp2x_gelu at 1024 -> 4096: 1024·4096 + 4096 + 4096·4096 + 4096
    built = create("mlp")
    assert count_params(built.module)[0] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096 == 20_979_712


def test_mlp_flops_are_the_two_matmuls():
    built = create("mlp", tokens=T, in_dim=I, out_dim=O)
    x = built.make_inputs(3)
    total, _ = count_flops(lambda: built.call(x))
    assert total == 2 * 3 * T * (I * O + O * O)


def test_ldp_refuses_a_non_square_grid(fast, capsys):
    assert main(["run", "ldp", "--tokens", "10", *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert "perfect square" in err and "\n" not in err


def test_pretrained_projector_round_trip(tmp_path, fast):
    torch.manual_seed(1)
    source = create("mlp", tokens=T, in_dim=I, out_dim=O).module
    state = {f"model.mm_projector.{k}": v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "mm_projector.bin")
    loaded = create("mlp", tokens=T, in_dim=I, out_dim=O, pretrained=str(tmp_path)).module
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    out = tmp_path / "r.json"
    assert main(["run", "mlp", "--tokens", str(T), "--in-dim", str(I), "--out-dim", str(O),
                 "--pretrained", str(tmp_path), *fast, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["records"][0]["params_total"] == I * O + O + O * O + O


def test_pretrained_errors_are_one_line(tmp_path, fast, capsys):
    assert main(["run", "linear", "--pretrained", str(tmp_path / "missing"), *fast]) == 2
    assert "no such file" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "projector.pt")
    assert main(["run", "linear", "--pretrained", str(tmp_path / "projector.pt"), *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit" in err and "\n" not in err
