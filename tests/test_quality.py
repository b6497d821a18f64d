"""`effprof quality projectors`: the training loop ranks projectors by what they can represent."""
import pytest
import torch

from effprof.studies import quality as Q
from effprof.cli.main import main
from effprof.core.errors import UsageError
from effprof.core.registry import create
from effprof.report.files import read_json


@pytest.fixture
def one_thread():  # tiny ops: thread hand-offs cost more than the work on a shared 2-core host
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(name, features, **extra):
    built = create(name, tokens=features.shape[1], in_dim=features.shape[2], out_dim=32, **extra)
    return Q.projector_quality(built.module, built.info["tokens_out"], 32, features, steps=200, lr=1e-2, batch=16)


def test_mlp_beats_linear_on_a_nonlinear_target(one_thread):
    features = Q.synthetic_features(96, 16, 16, seed=0)
    linear, mlp = train("linear", features), train("mlp", features)
    # the target is an even function of x: its best linear prediction is its mean, MSE = its variance = 1
    assert linear.test_mse == pytest.approx(1.0, abs=0.1)
    assert mlp.test_mse < 0.2 * linear.test_mse
    assert linear.trainable_params == (16 * 32 + 32) + (32 * 16 + 16)  # projector + decoder


def test_reconstruction_from_a_file_and_the_ldp_decoder(tmp_path, one_thread):
    x = torch.randn(24, 16, 8)
    path = tmp_path / "features.pt"
    torch.save(x, path)
    features = Q.load_features(str(path))
    assert torch.equal(features.targets, x) and "reconstruction" in features.description
    linear = train("linear", features)  # a 8 -> 32 -> 8 linear autoencoder can reconstruct exactly
    assert linear.test_mse < 0.05
    decoder = Q.Decoder(4, 3, 16, 4)  # 4×4 grid merged to 2×2: each output token decodes its 2×2 cells
    y = torch.zeros(1, 4, 4)
    y[0, 1, 0] = 1.0  # output token 1 = grid cell (row 0, col 1), covering input rows 0-1, cols 2-3
    with torch.no_grad():
        decoder.linear.weight.zero_()
        decoder.linear.bias.zero_()
        decoder.linear.weight[:, 0] = 1.0
        out = decoder(y)
    lit = sorted(int(i) for i in (out[0, :, 0] != 0).nonzero())
    assert lit == [2, 3, 6, 7]
    with pytest.raises(UsageError, match="decoder"):
        Q.Decoder(4, 3, 16, 5)


def test_quality_command_on_a_profile(tmp_path, one_thread, capsys):
    out = tmp_path / "q.json"
    args = ["quality", "projectors", "--device", "cpu", "--set", "tokens=4", "--set", "in_dim=8", "--set", "out_dim=16",
            "--steps", "5", "--samples", "10", "--no-cost", "--json", str(out)]
    assert main(args) == 0
    records = read_json(out)
    assert [r["label"] for r in records][:2] == ["linear", "lowrank-r256"]
    assert records[-1]["label"] == "ldp (4->1)"  # the label follows --set tokens=4
    assert all(r["quality_steps"] == 5 and r["quality_test_mse"] > 0 for r in records)
    text = capsys.readouterr().out
    assert "synthetic features" in text and "test MSE" in text
    assert main(["quality", "projectors", "--images-dir", str(tmp_path)]) == 2
    assert main(["quality", "projectors", "--features", str(tmp_path / "missing.pt")]) == 2


def test_features_extracted_from_images_with_a_clip_tower(tmp_path, one_thread):
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip")
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(40, 32), (32, 50), (64, 64)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(images / f"{i}.png")
    features = Q.extract_clip_features(str(images), str(tmp_path / "clip"), torch.device("cpu"))
    assert features.shape == (3, 16, 16)  # 3 images, (32/8)² patches without the class token, width 16
    out = tmp_path / "q.json"
    assert main(["quality", "projectors", "--images-dir", str(images), "--pretrained", str(tmp_path / "clip"),
                 "--device", "cpu", "--steps", "3", "--no-cost", "--test-fraction", "0.34", "--set", "out_dim=8",
                 "--json", str(out)]) == 0
    records = read_json(out)
    assert len(records) == 6 and all("CLIP features of 3 images" in r["quality_features"] for r in records)
