"""Execution defaults of the built-in GPU profiles: graphs on CUDA (eager with a note elsewhere), --eager for the
host-bound, as-deployed figure, `launch: {isolate: true}`, and the stage split marked when it does not add up."""
import pytest
import yaml

from effprof.cli.main import main
from effprof.core.errors import ProfileError
from effprof.core.options import RunOptions
from effprof.core.profiles import load_profile
from effprof.report.files import read_json


@pytest.mark.parametrize("name", ["token-reduction", "vmamba-directions", "clip-lora", "tome-vit"])
def test_graphs_profiles_fall_back_to_eager_on_cpu_with_a_note(name):
    on_cpu = load_profile(name, RunOptions(), {"device": "cpu"})
    assert on_cpu.configs and not any(c.options.graphs for c in on_cpu.configs)
    assert all(c.notes == ("graphs (the profile's default on CUDA) -> eager on cpu: CUDA graphs exist only on CUDA",)
               for c in on_cpu.configs)
    assert on_cpu.notes and f"({len(on_cpu.configs)} rows)" in on_cpu.notes[0]
    with pytest.raises(ProfileError, match="--graphs needs a CUDA device"):  # asked for on the CLI: refused
        load_profile(name, RunOptions(), {"device": "cpu", "graphs": True})
    eager = load_profile(name, RunOptions(), {"device": "cpu", "eager": True})
    assert all(c.options.eager and not c.options.graphs and not c.notes for c in eager.configs)


def test_token_reduction_declares_isolation_and_graphs():
    from effprof.cli.commands.compare import profile_isolates

    profile = load_profile("token-reduction", RunOptions(), {"device": "cpu"})
    assert profile.launch == {"isolate": True}
    assert not profile_isolates(profile, None)  # the default is for CUDA rows only
    assert load_profile("vmamba-directions", RunOptions(), {"device": "cpu"}).launch == {}


def test_eager_wins_over_a_profile_and_contradictions_are_one_line(capsys):
    options = RunOptions(graphs=True, compile=True, eager=True)
    assert not options.graphs and not options.compile
    assert main(["run", "linear", "--device", "cpu", "--eager", "--graphs"]) == 2
    err = capsys.readouterr().err
    assert "--eager times the call as deployed: drop --graphs" in err and "Traceback" not in err


def test_a_graphs_profile_runs_eager_on_cpu_and_says_so(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "options": {"device": "cpu", "min_time": 0.02, "warmup": 0, "max_cv": 1, "graphs": True},
        "launch": {"isolate": True},
        "rows": [{"component": "linear", "params": {"tokens": 4, "in_dim": 8, "out_dim": 8}}]}))
    out = tmp_path / "r.json"
    assert main(["compare", str(path), "--json", str(out)]) == 0
    (record,) = read_json(out)
    assert record["exec_mode"] == "eager" and "-> eager on cpu" in record["exec_note"]
    assert "worker_pid" not in record  # isolation is a CUDA default: on cpu the row ran here
    assert "-> eager on cpu: CUDA graphs exist only on CUDA (every row)" in capsys.readouterr().out


@pytest.mark.parametrize("launch, message", [({"isolated": True}, "unknown key 'isolated'"),
                                             ({"isolate": "yes"}, "isolate: 'yes' is not a bool"),
                                             ([1], "launch must be a mapping")])
def test_launch_key_is_checked(tmp_path, launch, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"launch": launch, "rows": [{"component": "linear"}]}))
    with pytest.raises(ProfileError, match=message):
        load_profile(str(path), RunOptions(), {"device": "cpu"})


def test_tome_in_a_clip_tower_reads_nothing_back_on_the_host():
    """tome-vit's graphs default needs ToMe's forward in a CLIP tower to be capturable: no op that reads a value
    back on the host (seen at the dispatcher on CPU)."""
    import torch
    from conftest import op_recorder

    from effprof.core.registry import BuildContext, get_component

    component = get_component("clip-vision")
    values = component.resolve({"preset": "vit-b-16", "reducer": "tome", "r": 16, "img_size": 64})
    built = component.build(values, BuildContext(torch.device("cpu"), torch.float32, 0, "graphs"))
    built.module.eval()
    inputs = built.make_inputs(1)
    ops = op_recorder()
    with torch.inference_mode(), ops:
        built.call(inputs)
    assert "argsort" in ops.seen or "sort" in ops.seen  # the merge ran
    assert not ops.seen & {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "_unique2"}
