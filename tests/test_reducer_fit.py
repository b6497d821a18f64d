"""`effprof run llava --preset tiny --reducer fastv|pyramiddrop|sparsevlm` works: the LM reducers' layer
defaults (set for a 32-layer LM) are scaled to the tiny LM's 2 layers and the record says so; a value the
user gave that does not fit is refused in one line that says what fits (issue 27)."""
import pytest

from effprof.cli.main import main
from effprof.runner import Config, RunOptions, build

CPU = RunOptions(device="cpu", dtype="fp32")


@pytest.mark.parametrize("reducer, fitted", [("fastv", "fastv_k 2 -> 1"), ("pyramiddrop", "pdrop_layers 8,16,24 -> 1"),
                                             ("sparsevlm", "sparse_layers 2,6,15 -> 0")])
def test_lm_reducer_defaults_fit_the_tiny_lm(reducer, fitted):
    built, _, _ = build(Config("llava", {"preset": "tiny", "reducer": reducer}, CPU))
    assert built.info["reducer_fitted"].startswith(fitted)
    lm_reducer = built.module.lm_reducer.reducer
    assert lm_reducer.stages(built.info["image_tokens"], 2)  # the schedule the run uses fits two layers


def test_a_value_that_fits_is_kept_and_not_reported():
    built, _, _ = build(Config("llava", {"preset": "tiny", "reducer": "fastv", "fastv_k": "1"}, CPU))
    assert "reducer_fitted" not in built.info and built.module.lm_reducer.reducer.k == 1


@pytest.mark.parametrize("argv, says", [
    (["--reducer", "fastv", "--fastv-k", "3"], "give --fastv-k below 2 (e.g. --fastv-k 1)"),
    (["--reducer", "pyramiddrop", "--pdrop-layers", "1,4"], "give --pdrop-layers below 2"),
])
def test_a_given_value_that_does_not_fit_says_what_does(argv, says, capsys):
    assert main(["run", "llava", "--preset", "tiny", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
