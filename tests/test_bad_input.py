"""Bad input never ends in a traceback (issue 17): one test per class of bad input, each with the example
the issue gives. In-process through `effprof.cli.main` unless a real process is the point (a terminal,
a signal, a closed standard output)."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from effprof.cli.main import main
from effprof.core.errors import ParamError
from effprof.measure.footprint import footprint
from effprof.core.options import RunOptions
from effprof.core.params import Param
from effprof.core.registry import Built, list_components, register_component
from effprof.report.files import read_csv
from effprof.runner import Config, is_oom

TINY = ["--tokens", "4", "--in-dim", "8", "--out-dim", "8"]
FAST = ["--device", "cpu", "--min-time", "0.01", "--warmup", "0"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refused(argv, capsys, code=2, says="", within_s=None):
    """Run the CLI; assert exit `code` and exactly one line on stderr naming `says`, no traceback (and, with
    `within_s`, an answer within that many seconds)."""
    start = time.perf_counter()
    assert main(argv) == code
    assert within_s is None or time.perf_counter() - start < within_s
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("effprof: error:"), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "effprof", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kwargs)


@register_component("test-bi-alloc", unit="seq", params=[Param("mib", int, 1, "MiB allocated per call", low=1,
                                                            high=2**40)])
def bi_alloc(ctx, mib):
    """Allocates `mib` MiB per call (activations the footprint cannot see)."""
    layer = torch.nn.Linear(4, 4)

    def forward(module, inputs):
        return torch.empty(mib * 2**20, dtype=torch.uint8, device=ctx.device).fill_(1)

    return Built(layer, lambda b: (torch.randn(b, 4, device=ctx.device),), unit="seq", forward=forward)


# ---- sizes nothing can hold --------------------------------------------------------------------------

def test_sizes_nothing_can_hold_are_refused_in_one_line(capsys):
    refused(["run", "linear", "--tokens", "99999999999999999999999", *FAST], capsys,
            says="--tokens: 99999999999999999999999 is outside the allowed range [1, 4194304]")
    for argv, says in ((["run", "linear", "--out-dim", "1000000000000"], "--out-dim"),
                       (["run", "linear", "--batch", "1000000000000"], "--batch"),
                       (["run", "mamba", "--d-model", "1000000000000"], "--d-model"),
                       (["run", "mamba-lm", "--seq-len", "1000000000000"], "--seq-len"),
                       (["run", "mrss", "--r", "1099511627776"], "--r"),
                       (["run", "ssm-conv", "--length", str(10**23)], "--length"),
                       (["run", "mamba-lm", "--n-layer", "1000000000000"], "--n-layer")):
        refused(argv + FAST, capsys, says=says)


def test_every_size_parameter_declares_an_upper_bound():
    builtin = [c for c in list_components() if c.factory.__module__.startswith("effprof.")]
    assert len(builtin) >= 10
    for component in builtin:  # test and plugin components get the implicit ceiling checked below
        for p in component.params:
            if p.type is int:
                assert p.high is not None or p.choices is not None, \
                    f"{component.name} --{p.name}: declare high= (effprof/core/limits.py)"
    with pytest.raises(ParamError, match="larger than any size"):
        Param("n", int, 1, "undeclared", low=1).parse(str(2**40))


def test_a_configuration_that_cannot_fit_is_refused_before_allocating(capsys):
    # 4M tokens x 65536 wide x batch 1000 in fp32: 1000 * 2**22 * 2**16 * 4 bytes = 1000 TiB of inputs
    line = refused(["run", "linear", "--tokens", "4194304", "--in-dim", "65536", "--out-dim", "8", "--batch", "1000",
                    *FAST], capsys, says="needs")
    assert "1000.0 TiB" in line and "free on cpu" in line
    # the count it refuses on, against a closed form: weights (in*out + out) and inputs (batch*tokens*in), fp32
    opts = RunOptions(device="cpu", batch=3)
    need = footprint(Config("linear", {"tokens": 5, "in_dim": 7, "out_dim": 11}, opts))
    assert need.weights_bytes == (7 * 11 + 11) * 4 and need.inputs_bytes == 3 * 5 * 7 * 4
    cold = footprint(Config("linear", {"tokens": 5, "in_dim": 7, "out_dim": 11}, RunOptions(device="cpu", cold=True)))
    assert cold.inputs_bytes == 4 * 5 * 7 * 4  # --cold rotates 4 input sets


def test_an_allocation_that_fails_anyway_is_an_oom_row_on_cpu(tmp_path, capsys):
    out = tmp_path / "oom.csv"
    assert main(["run", "test-bi-alloc", "--mib", str(2**36), *FAST, "--csv", str(out)]) == 1  # 64 PiB per call
    err = capsys.readouterr().err
    assert err.strip() == "effprof: error: test-bi-alloc: OOM: out of memory"
    assert read_csv(out)[0]["status"] == "OOM"
    assert is_oom(MemoryError()) and is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_oom(RuntimeError("shape mismatch"))


# ---- numbers that are not numbers; runs that never end -----------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("--min-time", "nan", "not a finite number"), ("--min-time", "inf", "not a finite number"),
    ("--seed", "18446744073709551616", "--seed: 18446744073709551616 is outside [0, 9223372036854775806]"),
    ("--warmup", "nan", "not a finite number"), ("--max-time", "nan", "not a finite number"),
    ("--warmup", "inf", "not a finite number"), ("--min-time", "1e300", "outside (0, 3600] s"),
    ("--max-cv", "nan", "not a finite number"), ("--seed", "-1", "outside"),
])
def test_numbers_that_are_not_numbers_are_refused(option, value, says, capsys):
    start = time.perf_counter()
    refused(["run", "linear", *TINY, "--device", "cpu", option, value], capsys, says=says)
    assert time.perf_counter() - start < 5  # refused, not run until killed


def test_empty_values_are_not_silently_defaults(capsys):
    refused(["run", "clip-vision", "--img-size", "", *FAST], capsys, says="--img-size: an empty value")
    refused(["run", "linear", "--pretrained", "", *FAST], capsys, says="--pretrained: an empty value")
    refused(["env", "--device", ""], capsys, says="--device")


# ---- output paths ------------------------------------------------------------------------------------

def test_output_paths_that_cannot_be_written_are_refused_before_measuring(tmp_path, capsys):
    deep = tmp_path / "a" / "b" / "c" / "r.csv"
    for argv, says in ((["--csv", str(tmp_path)], "is a directory"),
                       (["--csv", str(deep)], f"folder {tmp_path / 'a'} does not exist"),
                       (["--json", "/proc/effprof.json"], "cannot write there"),
                       (["--csv", str(tmp_path / ("x" * 300 + ".csv"))], "longer than this file system allows"),
                       (["--csv", ""], "--csv: the path is empty"), (["--json", "  "], "--json: the path is empty"),
                       (["--csv", str(tmp_path / "f"), "--json", str(tmp_path / "f")], "name the same file"),
                       (["--csv", "~nosuchuser_effprof/x.csv"], "no user named 'nosuchuser_effprof'")):
        refused(["run", "linear", *TINY, *FAST, *argv], capsys, says=says)
        assert not deep.parent.exists()
    refused(["compare", "linear", "--grid", "tokens=4", *FAST, "--plot", ""], capsys, says="--plot: the path is empty")
    if os.geteuid() != 0:  # root writes anywhere but /proc
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        refused(["run", "linear", *TINY, *FAST, "--csv", str(locked / "r.csv")], capsys, says="cannot write there")


def test_tilde_is_expanded_and_files_are_created_0644(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    old = os.umask(0o022)
    try:
        assert main(["run", "linear", *TINY, *FAST, "--csv", "~/r.csv", "--json", "~/r.json"]) == 0
    finally:
        os.umask(old)
    for name in ("r.csv", "r.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    assert read_csv(tmp_path / "r.csv")[0]["status"] == "ok"
    assert not list(tmp_path.glob(".effprof-*"))  # no temporary file left


def test_destinations_that_are_not_files_are_written_through_never_replaced(tmp_path, capsys):
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    inode = os.stat(target).st_ino
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert main(["run", "linear", *TINY, *FAST, "--csv", str(link), "--json", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device
    assert link.is_symlink() and read_csv(target)[0]["status"] == "ok"  # the link stays, its target is written
    assert os.stat(target).st_ino == inode  # through, not replaced by another file
    capsys.readouterr()
    assert main(["run", "linear", *TINY, *FAST, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["records"][0]["component"] == "linear"  # stdout holds the JSON only
    assert "effprof run linear" in err  # the table went to stderr
    csv_path = tmp_path / "kept.csv"
    line = refused(["run", "linear", *TINY, *FAST, "--csv", str(csv_path), "--json", "/dev/full"], capsys, code=1,
                   says="cannot write /dev/full: No space left on device")
    assert read_csv(csv_path)[0]["status"] == "ok"  # what was written elsewhere is kept
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and line


# ---- checkpoints -------------------------------------------------------------------------------------

def test_bad_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cases = {"empty.safetensors": b"", "corrupt.safetensors": b"\xff" * 64, "empty.pt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    save_file({"weight": torch.ones(8, 8)}, tmp_path / "partial.safetensors")
    for name, says in (("empty.safetensors", "is empty (0 bytes)"), ("corrupt.safetensors", "not a valid safetensors"),
                       ("empty.pt", "is empty (0 bytes)"), ("tensor.pt", "holds a Tensor, not a state dict"),
                       ("list.pt", "holds a list, not a state dict"),
                       ("evil.pt", "holds pickled code (posix.system), not only weights; effprof loads weights only"),
                       ("partial.safetensors", "does not fit this projector")):
        refused(["run", "linear", *TINY, *FAST, "--pretrained", str(tmp_path / name)], capsys, says=says)
    assert not marker.exists()  # nothing ran from the pickle
    refused(["run", "linear", *TINY, *FAST, "--pretrained", "~nosuchuser_effprof/x"], capsys, says="no user named")


def mamba_dir(tmp_path, name, config: bytes | dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    torch.save({}, folder / "pytorch_model.bin")
    return str(folder)


def clip_dir(tmp_path, name, config: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_bad_checkpoint_configs_are_refused_in_one_line(tmp_path, capsys):
    good = {"d_model": 8, "n_layer": 1, "vocab_size": 16}
    for name, config, says in (
            ("string", {**good, "d_model": "wide"}, "d_model is 'wide', not an int"),
            ("partial", {"hidden_size": 8}, "missing num_hidden_layers, vocab_size"),
            ("latin1", "{\"d_model\": \"caf\xe9\"}".encode("latin-1"), "is not UTF-8 text"),
            ("list", b"[1, 2]", "holds a list, not a mapping"),
            ("broken", b"{\"d_model\": ", "is not valid JSON")):
        refused(["run", "mamba-lm", "--seq-len", "8", *FAST, "--pretrained", mamba_dir(tmp_path, name, config)],
                capsys, says=says)
    heads = {"hidden_size": 10, "num_attention_heads": 3}
    refused(["run", "clip-vision", *FAST, "--pretrained", clip_dir(tmp_path, "heads", heads)], capsys,
            says="3 attention heads do not divide the width 10")
    refused(["run", "clip-vision", *FAST, "--pretrained", clip_dir(tmp_path, "typed", {"vision_config": {"patch_size": "x"}})],
            capsys, says="patch_size is 'x', not a int")


def test_an_empty_checkpoint_is_not_an_interruption(tmp_path, capsys):
    folder = mamba_dir(tmp_path, "m", {"d_model": 8, "n_layer": 1, "vocab_size": 16})
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"")
    line = refused(["run", "mamba-lm", "--seq-len", "8", *FAST, "--pretrained", folder], capsys, says="is empty")
    assert "interrupted" not in line


# ---- profiles ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("rows: 3", "rows must be a non-empty list"),
    ("rows: [{component: null}]", "row 1: component must be a component name"),
    ("rows: [{component: 3}]", "row 1: component must be a component name"),
    ("rows: [{component: [linear]}]", "row 1: component must be a component name"),
    ("rows: [{component: {a: 1}}]", "row 1: component must be a component name"),
    ("rows: [{component: linear, params: [1, 2]}]", "row 1: params must be a mapping"),
    ("rows: [{component: linear, params: tokens}]", "row 1: params must be a mapping"),
    ("options: {batch: big}\nrows: [{component: linear}]", "options: batch: 'big' is not a int"),
    ("options: {batch: null}\nrows: [{component: linear}]", "options: batch needs a value"),
    ("options: {min_time: x}\nrows: [{component: linear}]", "options: min_time: 'x' is not a float"),
    ("options: {device: 3}\nrows: [{component: linear}]", "options: device: 3 is not a str"),
    ("component: linear\ngrid: {tokens: null}", "grid.tokens needs a non-empty list"),
    ("component: linear\ngrid: {tokens: [[4, 8]]}", "grid.tokens: [4, 8] is not a single value"),
    ("rows: [{component: linear}, {component: linear, params: {tokens: 0}}]", "row 2 (linear): --tokens: 0"),
])
def test_malformed_profiles_name_file_row_and_field(text, says, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    refused(["compare", str(path)], capsys, says=f"{path}: {says}")


def test_profile_not_utf8_or_name_too_long(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"title: caf\xe9\nrows: [{component: linear}]\n")
    refused(["compare", str(path)], capsys, says="not UTF-8 text (byte 0xe9 at offset 10)")
    refused(["compare", "x" * 5000], capsys, says="no profile")


def test_profile_options_are_typed_like_the_cli_and_grids_merge(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("options: {cold: 'no', device: cpu, min_time: 0.01, warmup: 0}\n"
                    "rows: [{component: linear, params: {tokens: 4, in_dim: 8, out_dim: 8}}]\n")
    out = tmp_path / "r.json"
    assert main(["compare", str(path), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["records"][0]["timing_mode"] == "warm"  # 'no' is False, not truthy
    assert main(["compare", "linear", "--grid", "tokens=4", "--grid", "tokens=8", "--grid", "in_dim=8",
                 "--grid", "out-dim=8", *FAST, "--json", str(out)]) == 0
    assert [r["param_tokens"] for r in json.loads(out.read_text())["records"]] == [4, 8]


# ---- plugins -----------------------------------------------------------------------------------------

PLUGINS = {
    "bi_raises": "raise RuntimeError('boom at import')\n",
    "bi_syntax": "def f(:\n",
    "bi_dup": "from effprof.core.registry import register_component\n@register_component('linear', unit='tok')\n"
              "def f(ctx): pass\n",
    "bi_unit": "from effprof.core.registry import register_component\n@register_component('bi-px', unit='px')\n"
               "def f(ctx): pass\n",
    "bi_ok": "from effprof.core.registry import register_component, Built\n@register_component('test-bi-ok', unit='tok')\n"
             "def f(ctx):\n    raise ValueError('factory failed')\n",
}


@pytest.mark.parametrize("plugin, says", [
    ("bi_raises", "plugin 'bi_raises' failed to load: RuntimeError: boom at import"),
    ("bi_syntax", "plugin 'bi_syntax' failed to load: SyntaxError"),
    ("bi_dup", "plugin 'bi_dup' failed to load: ValueError: component 'linear' is registered twice"),
    ("bi_unit", "plugin 'bi_unit' failed to load: ValueError: unit must be one of"),
    (".relative", "'.relative' is not an absolute module name"),
])
def test_a_failing_plugin_is_one_line_and_list_still_works(plugin, says, tmp_path, monkeypatch, capsys):
    from effprof.core import registry
    from effprof.core.plugins import load_plugins

    for name, text in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.list_components()  # built-ins and EFFPROF_PLUGINS loaded first: the errors below replace theirs
    monkeypatch.setattr(registry, "PLUGIN_ERRORS", load_plugins(f"{plugin},bi_ok", registry._REGISTRY))
    assert main(["list"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().startswith("effprof: error: EFFPROF_PLUGINS:") and says in err and err.count("\n") == 1
    assert "linear" in out and "test-bi-ok" in out and "bi-px" not in out  # the rest is listed
    refused(["run", "test-bi-ok", *FAST], capsys, code=1, says="test-bi-ok: error: ValueError: factory failed")


# ---- roofline --from-json ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc, says", [
    (3, "not effprof records"), ("records", "not effprof records"), ({"records": [1, 2]}, "record 1 is a int"),
    ({"records": [{"tflops_per_s": "fast"}]}, "record 1: tflops_per_s is 'fast', not a finite number"),
    ({"records": [{"peak_gb_per_s": -5.0}]}, "record 1: peak_gb_per_s is -5.0, not positive"),
])
def test_roofline_from_json_refuses_malformed_records(doc, says, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    refused(["roofline", "--from-json", str(path), "--plot", str(tmp_path / "r.png")], capsys, says=says)


# ---- terminals, signals, order of output (real processes) --------------------------------------------

def test_terminals_ascii_closed_and_full_stdout(tmp_path):
    proc = cli(["list", "linear"], env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "24x24" in proc.stdout
    csv_path = tmp_path / "r.csv"
    shell = (f"{sys.executable} -m effprof run linear {' '.join(TINY + FAST)} --csv {csv_path} > /dev/full; "
             f"echo rc=$? >&2; {sys.executable} -m effprof list >&-; echo rc=$? >&2")
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("USDT:")]  # torch's Kineto
    assert lines == ["effprof: error: cannot write to standard output (No space left on device)", "rc=1",
                     "effprof: error: cannot write to standard output (standard output is closed)", "rc=1"], lines
    assert read_csv(csv_path)[0]["status"] == "ok"  # files are written before the table


SLOW_PLUGIN = '''
import os, signal, time, torch
from effprof.core.params import Param
from effprof.core.registry import Built, register_component

@register_component("bi-slow", unit="seq", params=[Param("n", int, 1, "row", low=1, high=9)])
def build(ctx, n):
    """Row 2 signals its own process (SIGTERM or SIGINT, as EFFPROF_SIGNAL says) while it is measured."""
    layer = torch.nn.Linear(4, 4)
    def forward(module, inputs):
        if n == int(os.environ["EFFPROF_SIGNAL_ROW"]):
            os.kill(os.getpid(), getattr(signal, os.environ["EFFPROF_SIGNAL"]))
            time.sleep(5)
        return module(*inputs)
    return Built(layer, lambda b: (torch.randn(b, 4),), unit="seq", forward=forward)
'''


@pytest.mark.parametrize("sig, row, code, says", [
    ("SIGTERM", 2, 143, "effprof: error: terminated after 1 of 3 rows; finished rows are in"),
    ("SIGINT", 1, 130, "effprof: error: interrupted after 0 of 3 rows; no row had finished, no file written"),
])
def test_sigterm_ends_like_ctrl_c_and_nothing_is_claimed_before_the_first_row(sig, row, code, says, tmp_path):
    (tmp_path / "bi_slow.py").write_text(SLOW_PLUGIN)
    out = tmp_path / "rows.csv"
    proc = cli(["compare", "bi-slow", "--grid", "n=1,2,3", *FAST, "--csv", str(out)],
               env={"EFFPROF_PLUGINS": "bi_slow", "EFFPROF_SIGNAL": sig, "EFFPROF_SIGNAL_ROW": str(row),
                    "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)])})
    assert proc.returncode == code, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    if row == 1:
        assert not out.exists()
    else:
        assert [r["label"] for r in read_csv(out)] == ["n=1"]
    assert not list(tmp_path.glob(".effprof-*"))
