"""Typos and out-of-range values are refused before torch is imported: as fast as --help (issue 27). One
subprocess runs every refusal through the CLI's entry point and reports whether torch was loaded."""
import json
import subprocess
import sys

REFUSALS = [
    ["run", "clip-vtp", "--keep", "1.5"],
    ["run", "clip-vtp", "--kep", "0.5"],
    ["run", "clip-vtpx"],
    ["run", "clip-vtp", "--device", "gpu"],
    ["run", "clip-vtp", "--batch", "0"],
    ["run", "clip-vtp", "--threads", "0"],
    ["run", "llava", "--reducer", "nope"],
    ["run", "llava", "--preset", "tiny", "--reducer", "fastv", "--fastv-k", "0"],
    ["compare", "projectors", "--in-dim", "-3"],
    ["compare", "projectors", "--batch", "0"],
    ["compare", "linear", "--grid", "tokens=a"],
    ["compare", "nosuchprofile"],
    ["breakdown", "clip-vtp", "--keep", "2"],
    ["estimate", "llava", "--context", "0"],
]

SCRIPT = """
import json, sys
from effprof.cli.main import main
out = []
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    out.append([code, "torch" in sys.modules])
print(json.dumps(out))
"""


def test_refusals_come_before_torch_is_imported():
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(REFUSALS)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [line for line in done.stderr.splitlines() if line.startswith("effprof: error:")]
    assert len(lines) == len(REFUSALS)  # one line each
    for argv, (code, torch_loaded), line in zip(REFUSALS, results, lines):
        assert code == 2, (argv, line)
        assert not torch_loaded, f"effprof {' '.join(argv)}: torch was imported before the refusal ({line})"
