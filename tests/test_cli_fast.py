"""`effprof --help`, `-h`, `--version` and `effprof list` do not import torch: they read the declarations only
(component modules defer torch and their modules to the factories, effprof/core/lazy.py)."""
import subprocess
import sys

import pytest

CHECK = """
import sys
from effprof.cli.main import main
code = main({argv!r})
heavy = sorted(m for m in ("torch", "transformers", "triton", "numpy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"], ["list"], ["list", "mamba*"], ["list", "mamba-lm"]])
def test_help_version_and_list_import_no_torch(argv):
    proc = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout[-500:]
    if argv[0] == "list":  # a line per component; one component's parameters in detail
        assert "mamba-lm" in proc.stdout and "profiles:" in proc.stdout
        assert ("--scan-backend" in proc.stdout) == (argv == ["list", "mamba-lm"])


def test_choices_declared_beside_components_match_their_modules():
    from effprof.components import mamba as mamba_component, mrss as mrss_component, ssm_conv as ssm_component
    from effprof.components import vlm as vlm_component
    from effprof.models import cobra, llava
    from effprof.modules import mamba, mrss, ssm_conv

    assert mrss_component.DOWNSAMPLE == mrss.DOWNSAMPLE and mrss_component.UPSAMPLE == mrss.UPSAMPLE
    assert ssm_component.S4D_INITS == ssm_conv.S4D_INITS
    assert mamba_component.PRESET_NAMES == tuple(mamba.MAMBA_PRESETS)
    assert vlm_component.PRESET_NAMES == tuple(llava.PRESETS)
    assert vlm_component.COBRA_PRESET_NAMES == tuple(cobra.PRESETS)
    assert vlm_component.TOWER_MODES == cobra.TOWER_MODES


def test_lazy_stand_ins_behave_like_the_real_objects():
    from effprof.core.lazy import lazy_from, lazy_import

    json_module = lazy_import("json")
    assert json_module.dumps([1]) == "[1]"
    (OrderedDict,) = lazy_from("collections", "OrderedDict")
    assert OrderedDict(a=1)["a"] == 1 and OrderedDict.fromkeys("ab") == {"a": None, "b": None}
    assert isinstance(OrderedDict(), OrderedDict) and not isinstance({}, OrderedDict)
    (maxsize,) = lazy_from("sys", "flags")
    assert maxsize[0] == __import__("sys").flags[0]  # indexing reaches the real object
