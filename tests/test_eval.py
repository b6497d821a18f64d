"""`effprof eval`: exact top-1/top-5 of a tiny model whose answers are known, on a folder the test writes;
checkpoints without pickled code; one-line refusals of bad folders."""
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from effprof.cli.main import main
from effprof.studies.evaluate import Preprocess
from effprof.core.params import Param
from effprof.core.registry import Built, register_component
from effprof.report.files import read_json

# logits = W · (mean R, G, B) + b: classes 0-2 follow the colour, classes 3-6 have fixed scores
WEIGHT = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
BIAS = torch.tensor([0, 0, 0, 0.11, 0.22, 0.33, 0.44])


class ColourNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.preprocess = Preprocess(8, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def forward(self, images):
        return self.head(images.mean(dim=(2, 3)))


@register_component("test-colour-classifier", unit="img", family="vision", params=[
    Param("num_classes", int, 7, "classes", low=1), Param("img_size", int, 8, "side", low=1)])
def _colour(ctx, num_classes, img_size):
    """A linear classifier on mean colour."""
    model = ColourNet(num_classes).to(ctx.device, ctx.dtype)
    return Built(model, lambda b: (torch.rand(b, 3, img_size, img_size, device=ctx.device, dtype=ctx.dtype),), "img")


RED, DARK_RED, GREEN, BLUE, BLACK = (255, 0, 0), (64, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)
# folder (label = sorted position) -> colours; expected (top-1, top-5) hits are worked out in the comments
FOLDER = {"a": [RED, DARK_RED],   # red -> 0 (hit, hit); dark red -> 6 first, 0 third (miss, hit)
          "b": [GREEN, RED],      # green -> 1 (hit, hit); red -> 0, 6, 5, 4, 3: 1 not among them (miss, miss)
          "c": [BLUE],            # hit, hit
          "d": [BLACK], "e": [BLACK], "f": [BLACK],  # black -> 6, 5, 4, 3, ...: (miss, hit) each
          "g": [BLACK]}           # (hit, hit)
FAST = ["--device", "cpu", "--batch", "4", "--min-time", "0.01", "--warmup", "0"]


def write_folder(root, folders=FOLDER):
    for name, colours in folders.items():
        (root / name).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (12, 10), colour).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "colour.safetensors"
    save_file({"head.weight": WEIGHT, "head.bias": BIAS}, str(path))
    return path


def run_eval(tmp_path, *args):
    out = tmp_path / "eval.json"
    code = main(["eval", "test-colour-classifier", *args, *FAST, "--json", str(out)])
    return code, (read_json(out)[0] if code == 0 else None)


def test_exact_top1_top5_on_a_known_folder(tmp_path, checkpoint):
    data = write_folder(tmp_path / "data")
    code, record = run_eval(tmp_path, "--data", str(data), "--pretrained", str(checkpoint))
    assert code == 0
    assert record["eval_images"] == 9 and record["eval_classes"] == 7
    assert record["top1_pct"] == pytest.approx(100 * 4 / 9)
    assert record["top5_pct"] == pytest.approx(100 * 8 / 9)
    assert record["eval_img_per_s"] > 0 and record["eval_model_img_per_s"] >= record["eval_img_per_s"]
    assert record["latency_ms_median"] > 0 and record["params_total"] == 7 * 3 + 7  # the cost columns
    assert record["weights"] == str(checkpoint) and record["head"] == "checkpoint"


def test_torch_checkpoint_read_without_pickled_code_and_class_map(tmp_path):
    data = write_folder(tmp_path / "data", {k: FOLDER[k] for k in "abc"})
    path = tmp_path / "colour.pth"
    torch.save({"state_dict": {"head.weight": WEIGHT, "head.bias": BIAS}}, path)
    (tmp_path / "map.txt").write_text("a 0\nb 1\nc 2\n")
    code, record = run_eval(tmp_path, "--data", str(data), "--pretrained", str(path), "--class-map",
                            str(tmp_path / "map.txt"))
    assert code == 0
    assert record["top1_pct"] == pytest.approx(100 * 3 / 5) and record["top5_pct"] == pytest.approx(100 * 4 / 5)
    # a fresh 3-class head (the checkpoint's 7-class head is left out): runs, says so
    code, record = run_eval(tmp_path, "--data", str(data), "--pretrained", str(path), "--num-classes", "3")
    assert code == 0 and record["head"] == "fresh" and record["eval_classes"] == 3


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"head.weight": WEIGHT, "thing": Preprocess(8)}, path)
    data = write_folder(tmp_path / "data")
    code, _ = run_eval(tmp_path, "--data", str(data), "--pretrained", str(path))
    assert code == 2 and "cannot read it as weights" in capsys.readouterr().err


@pytest.mark.parametrize("case,expected", [
    ("empty", "no class subfolders"),
    ("no-images", "holds no images"),
    ("unreadable", "cannot decode image"),
    ("mismatch", "7 class folders but the head has 5 outputs"),
    ("unmapped", "is not in the map"),
])
def test_bad_folders_get_one_line(tmp_path, capsys, case, expected):
    data = tmp_path / "data"
    data.mkdir()
    args = []
    if case == "no-images":
        (data / "a").mkdir()
        (data / "a" / "notes.txt").write_text("x")
    elif case == "unreadable":
        write_folder(data / "x", {"a": [RED]})
        data = data / "x"
        (data / "a" / "broken.png").write_bytes(b"not a png")
    elif case == "mismatch":
        write_folder(data / "x")
        data, args = data / "x", ["--num-classes", "5"]
    elif case == "unmapped":
        write_folder(data / "x", {"a": [RED], "b": [GREEN]})
        (tmp_path / "map.json").write_text('{"a": 0}')
        data, args = data / "x", ["--class-map", str(tmp_path / "map.json")]
    code, _ = run_eval(tmp_path, "--data", str(data), *args)
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def _official_vmamba_keys(state, depths):
    """effprof names -> VMamba's (classification/models/vmamba.py, v2 channel-first layout)."""
    stem = {"0": "0", "1": "2", "3": "5", "4": "7"}
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] == "patch_embed":
            p[1] = stem[p[1]]
        elif p[0] in ("norm", "head"):
            p = ["classifier"] + p
        elif p[0] == "layers" and int(p[2]) == depths[int(p[1])]:
            p = p[:2] + ["downsample", {"conv": "1", "norm": "3"}[p[3]]] + p[4:]
        elif p[0] == "layers":
            p = p[:2] + ["blocks"] + p[2:]
        if p[-2] in ("in_proj", "out_proj", "fc1", "fc2") and p[-1] == "weight":
            value = value[:, :, None, None]  # Linear2d as a 1x1 conv
        out[".".join(p)] = value
    return out


def test_checkpoints_in_the_papers_own_key_names_load(tmp_path):
    from effprof.studies.evaluate import apply_checkpoint
    from effprof.models.mambavision import build_mambavision
    from effprof.models.vmamba import build_vmamba

    torch.manual_seed(0)
    source = build_vmamba("t", dim=16, depths=(1, 1, 2, 1)).eval()
    target = build_vmamba("t", dim=16, depths=(1, 1, 2, 1)).eval()
    assert apply_checkpoint(target, _official_vmamba_keys(source.state_dict(), (1, 1, 2, 1)), "x") == []
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images))
    source = build_mambavision("t", dim=16, depths=(1, 1, 2, 1)).eval()
    official = {}
    for key, value in source.state_dict().items():
        p = key.split(".")
        if p[0] == "patch_embed":
            p = ["patch_embed", "conv_down"] + p[1:]
        elif p[0] == "levels" and p[2] == "1":
            p = p[:2] + ["downsample", "reduction", "0", p[-1]]
        elif p[0] == "levels":
            p = p[:2] + ["blocks"] + p[4 if p[3] == "blocks" else 3:]
        official[".".join(p)] = value
    target = build_mambavision("t", dim=16, depths=(1, 1, 2, 1)).eval()
    assert apply_checkpoint(target, official, "x") == []
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images))
