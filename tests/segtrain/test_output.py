import json
import math

import pytest

from segtrain.output import percent, write_json


def test_percent_shows_two_decimals_and_a_dash_for_missing_figures():
    assert percent(0.12345) == "12.35"
    assert percent(1) == "100.00"
    assert percent(0.0) == "0.00"
    assert percent(None) == "-"
    assert percent(math.nan) == "-"


def test_write_json_is_sorted_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(path, {"b": 1, "a": [0.5]})
    assert json.loads(path.read_text()) == {"a": [0.5], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_write_json_refuses_nan_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"cba": 0.5})
    with pytest.raises(ValueError):
        write_json(path, {"cba": math.nan})
    assert json.loads(path.read_text()) == {"cba": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
