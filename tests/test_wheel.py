"""The package as a user installs it: a wheel, installed (not editable) into a fresh virtual environment, runs
`effprof compare projectors` from another folder, and a `profiles/` folder there does not shadow the built-in
profiles."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# without PYTHONPATH: the checkout on it would stand in for the installed package
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(command, **kw):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=CLEAN_ENV, **kw)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installed_in_a_fresh_venv_runs_built_in_profiles_from_elsewhere(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("effprof", "profiles"):  # the built-in profiles: the top-level folder, mapped into the wheel
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("effprof-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])
    # then torch, typer, rich ... from this interpreter's site-packages, added as a plain path: its .pth files
    # (an editable install of effprof among them) are not processed, so only the wheel provides effprof
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert (site / "effprof" / "_profiles" / "projectors.yaml").is_file()  # package data in the wheel
    (site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "profiles").mkdir(parents=True)
    # a local profiles/projectors.yaml that would fail if it were read
    (elsewhere / "profiles" / "projectors.yaml").write_text("rows: [{component: no-such-component}]\n")
    where = run([str(python), "-c", "import effprof, sys; print(effprof.__file__); print('torch' in sys.modules)"],
                cwd=elsewhere).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == "False"  # the installed copy, and no torch to import it
    out = tmp_path / "p.json"
    # the built-in profile, every projector shrunk to 16 tokens of 32 -> 64 (fixed parameters beside a profile)
    proc = run([str(venv / "bin" / "effprof"), "compare", "projectors", "--tokens", "16", "--in-dim", "32",
                "--out-dim", "64", "--device", "cpu", "--batch", "1", "--warmup", "0", "--min-time", "0.01",
                "--max-time", "0.1", "--json", str(out)], cwd=elsewhere)
    import json

    rows = json.loads(out.read_text())["records"]
    assert [r["label"] for r in rows] == ["linear", "lowrank-r256", "mlp2x_gelu", "gated", "lora-r8", "ldp (16->4)"]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["params_total"] == 32 * 64 + 64 and rows[1]["param_rank"] == 256  # the built-in rows, shrunk
    assert rows[5]["tokens_out"] == 4  # ldp: 16 tokens -> 4
    assert "LLaVA projectors" in proc.stdout
