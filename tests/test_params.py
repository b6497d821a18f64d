import pytest

from effprof.core.errors import ParamError
from effprof.core.params import Param, resolve


def test_float_range_open_low_closed_high():
    keep = Param("keep", float, 0.5, "fraction kept", low=0, high=1, low_open=True)
    assert keep.parse("1") == 1.0 and keep.parse(0.25) == 0.25
    assert keep.range_text() == "(0, 1]"
    for bad in ("0", "1.5", "-1", "nan", "abc"):
        with pytest.raises(ParamError) as info:
            keep.parse(bad)
        assert "--keep" in str(info.value)
    with pytest.raises(ParamError, match=r"outside the allowed range \(0, 1\]"):
        keep.parse("1.5")


def test_int_bool_choice_and_optional():
    rank = Param("rank", int, None, "rank", low=1, optional=True)
    assert rank.parse("none") is None and rank.parse("4") == 4
    with pytest.raises(ParamError):
        rank.parse("2.5")
    flag = Param("summary_token", bool, True, "add it")
    assert flag.parse("false") is False and flag.parse("on") is True
    with pytest.raises(ParamError):
        flag.parse("maybe")
    preset = Param("preset", str, "a", "p", choices=("a", "b"))
    with pytest.raises(ParamError, match="one of a, b"):
        preset.parse("c")
    with pytest.raises(ParamError):
        Param("n", int, 1, "n", low=1).parse(True)  # a bool is not an int


def test_resolve_fills_defaults_and_refuses_unknown():
    params = [Param("a", int, 1, "a"), Param("img_size", int, None, "s", optional=True)]
    assert resolve(params, {"img-size": "32"}, "x") == {"a": 1, "img_size": 32}
    with pytest.raises(ParamError, match="unknown parameter 'b'"):
        resolve(params, {"b": 1}, "x")


def test_bad_default_is_a_programming_error():
    with pytest.raises(ParamError):
        Param("n", int, 0, "n", low=1)
