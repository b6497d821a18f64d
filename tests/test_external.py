"""Any model from a file (`effprof run path/to/file.py:factory`) or the Hugging Face cache (`hf:MODEL_ID`)."""
import json
import textwrap

import pytest

from effprof.cli.main import main
from effprof.report.files import read_json

MODELS = textwrap.dedent('''
    import torch
    from effprof.core.registry import Built


    def conv(width: int = 8, kernel: int = 3):
        """A one-layer conv net."""
        return torch.nn.Conv2d(3, width, kernel, bias=False)


    def pair(dim: int, expand: float = 2.0):
        module = torch.nn.Linear(dim, int(expand * dim))
        return module, lambda batch: torch.randn(batch, 5, dim)


    def built(ctx, tokens: int = 4):
        module = torch.nn.Linear(6, 6, bias=False).to(ctx.device, ctx.dtype)
        return Built(module, lambda batch: (torch.randn(batch, tokens, 6, device=ctx.device, dtype=ctx.dtype),),
                     unit="tok", items_per_sample=tokens)
''')


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_module_factory_with_input_shape(models, fast):
    out = models / "conv.json"
    assert main(["run", "models.py:conv", "--width", "4", "--input-shape", "1x3x10x10", "--batch", "2", *fast,
                 "--json", str(out)]) == 0
    r = read_json(out)[0]
    assert r["params_total"] == 4 * 3 * 3 * 3 and r["param_width"] == 4 and r["unit"] == "img"
    assert r["gflops"] == pytest.approx(2 * 2 * 4 * 8 * 8 * 3 * 3 * 3 / 1e9)  # 2·batch·C_out·H'·W'·C_in·k²
    assert r["items_per_call"] == 2


def test_a_pair_and_a_built(models, fast):
    out = models / "r.json"
    assert main(["run", "models.py:pair", "--dim", "8", "--expand", "0.5", *fast, "--json", str(out)]) == 0
    r = read_json(out)[0]
    assert r["params_total"] == 8 * 4 + 4 and r["gflops"] == pytest.approx(2 * 5 * 8 * 4 / 1e9)
    assert main(["run", "models.py:built", "--tokens", "3", "--batch", "2", *fast, "--json", str(out)]) == 0
    r = read_json(out)[0]
    assert r["unit"] == "tok" and r["items_per_call"] == 6 and r["params_total"] == 36


@pytest.mark.parametrize("argv, says", [
    (["run", "models.py:conv"], "--input-shape"),
    (["run", "models.py:pair"], "--dim is required"),
    (["run", "models.py:nope"], "no function 'nope'"),
    (["run", "missing.py:conv"], "no file"),
    (["run", "models.py:conv", "--width", "wide"], "is not a int"),
    (["run", "models.py:conv", "--input-shape", "1xAx3"], "not a shape"),
])
def test_bad_file_components_are_one_line(models, argv, says, capsys):
    assert main(argv + ["--device", "cpu", "--min-time", "0.02", "--warmup", "0"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in captured.out + err
    # refused before building: one line on stderr; refused by the factory: a `refused` row with its reason
    assert says in err or ("refused" in captured.out and says in " ".join(captured.out.split()))


def test_a_profile_names_file_components_relative_to_itself(models, tmp_path, monkeypatch):
    (models / "prof").mkdir()
    (models / "prof" / "models.py").write_text(MODELS)
    (models / "prof" / "mine.yaml").write_text(textwrap.dedent('''
        options: {device: cpu, min_time: 0.02, warmup: 0}
        rows:
          - {component: models.py:pair, params: {dim: 8}, label: pair}
          - {component: models.py:conv, params: {width: 2, input_shape: 1x3x6x6}, label: conv}
    '''))
    monkeypatch.chdir(tmp_path.parent)
    out = tmp_path / "p.json"
    assert main(["compare", str(models / "prof" / "mine.yaml"), "--json", str(out)]) == 0
    rows = read_json(out)
    assert [r["label"] for r in rows] == ["pair", "conv"] and rows[1]["params_total"] == 2 * 27


def _tiny_hf_cache(root):
    """A Hugging Face hub cache holding only the config of a tiny GPT-2 (the layout huggingface_hub reads)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "models--wbtest--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    config = {"model_type": "gpt2", "vocab_size": 100, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
              "bos_token_id": 0, "eos_token_id": 0}
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(config))


def test_hf_model_from_the_cache_with_random_weights(tmp_path, monkeypatch, fast, capsys):
    _tiny_hf_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "hf.json"
    assert main(["run", "hf:wbtest/tiny-gpt2", "--seq-len", "16", *fast, "--json", str(out)]) == 0
    r = read_json(out)[0]
    V, P, d, L = 100, 64, 32, 2
    assert r["params_total"] == V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d  # GPT-2's closed form
    assert r["unit"] == "tok" and r["items_per_call"] == 16 and r["model_type"] == "gpt2"
    capsys.readouterr()
    assert main(["run", "hf:wbtest/absent", *fast]) == 2  # refused, saying why (a line on stderr)
    captured = capsys.readouterr()
    assert "never downloads" in captured.err and "\n" not in captured.err.strip()
    assert main(["run", "hf:wbtest/tiny-gpt2", "--pretrained", *fast]) == 2  # no weights in the cache
    captured = capsys.readouterr()
    assert "hf:wbtest/tiny-gpt2" in captured.err and "Traceback" not in captured.out + captured.err
