"""Every option of every command documents itself, and `-h` never cuts a flag's name (issue 27)."""
import re

import pytest
import typer

from effprof.cli.main import app, main


def _commands():
    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "compare", "estimate", "roofline", "breakdown", "eval", "quality projectors", "diff", "list"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_and_argument_has_help(path, command):
    ctx = command.make_context(" ".join(path), [], resilient_parsing=True)
    params = command.get_params(ctx)
    assert params
    missing = [p.name for p in params if not (p.help or "").strip()]
    assert not missing, f"effprof {' '.join(path)}: no help for {missing}"
    # an argument stays an argument (a string annotation once turned `roofline PROFILE` into `--target`)
    for param in params:
        if param.param_type_name == "option":
            assert all(o.startswith("-") for o in param.opts)


@pytest.mark.parametrize("columns", ["80", "120"])
@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_every_flag_whole_with_its_help(path, command, columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    assert main([*path, "-h"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    words = set(re.findall(r"--?[A-Za-z0-9][A-Za-z0-9-]*", out))
    ctx = command.make_context(" ".join(path), [], resilient_parsing=True)
    for param in command.get_params(ctx):
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("-"):
                assert flag in words, f"effprof {' '.join(path)} -h at {columns} columns: {flag} cut or missing"
        first_word = (param.help or "").split()[0]
        assert first_word in out


def test_roofline_takes_the_profile_as_its_argument_as_the_readme_writes_it(tmp_path, capsys, monkeypatch):
    """`effprof roofline projectors --plot roofline.png`: the profile is the positional argument."""
    pytest.importorskip("matplotlib")
    import torch

    import effprof.cli.commands.roofline as roofline
    import effprof.core.devices as devices
    from effprof.core.errors import UsageError

    plot = str(tmp_path / "roofline.png")
    assert main(["roofline", "projectors", "--plot", plot]) == 2  # parsed; on a CPU machine: needs CUDA
    err = capsys.readouterr().err
    assert "CUDA device" in err and "unexpected" not in err
    seen = {}

    def profile(target, grid, overrides):
        seen.update(target=target, grid=grid, device=overrides.get("device"))
        raise UsageError("stop here")

    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(roofline, "_profile", profile)
    assert main(["roofline", "projectors", "--plot", plot, "--device", "cuda"]) == 2
    assert seen == {"target": "projectors", "grid": None, "device": "cuda"}
