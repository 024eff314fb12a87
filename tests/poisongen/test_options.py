"""poisongen.options: the one typed declaration of every attack option, its YAML conversion and its
link to attacks.resolve."""

import inspect

import pytest

from poisongen import options as opts
from poisongen.attacks import PRESETS, resolve
from poisongen.errors import ConfigError


def spec(name, scope=opts.ATTACK):
    return next(s for s in opts.specs(scope) if s.name == name)


def test_every_option_is_a_keyword_of_resolve_with_the_same_default():
    params = inspect.signature(resolve).parameters
    for scope in opts.BOTH:
        kwargs = opts.AttackOptions().resolve_kwargs(scope)
        assert set(kwargs) <= set(params), set(kwargs) - set(params)
        for name, value in kwargs.items():
            assert params[name].default == value, name


def test_scopes_split_the_attack_only_and_testset_only_options():
    attack = {s.name for s in opts.specs(opts.ATTACK)}
    testset = {s.name for s in opts.specs(opts.TESTSET)}
    assert attack - testset == {"rate", "count", "prl_pixels", "allow_fewer", "full_scan"}
    assert testset - attack == {"split", "attack"}
    assert spec("attack", opts.TESTSET).choices == tuple(PRESETS)


def test_types_and_flags_come_from_the_annotations():
    assert (spec("rate").type, spec("rate").nullable) == (float, True)
    assert (spec("seed").type, spec("seed").nullable) == (int, False)
    assert spec("allow_fewer").type is bool
    assert spec("k").flag == "--k" and spec("trigger_size").flag == "--trigger-size"
    assert spec("metric").choices == ("euclidean", "chessboard")


@pytest.mark.parametrize("name,value,expected", [
    ("allow_fewer", "no", False), ("allow_fewer", "yes", True), ("allow_fewer", False, False),
    ("allow_fewer", "True", True), ("seed", 3, 3), ("seed", "3", 3), ("rate", 1, 1.0), ("rate", "0.5", 0.5),
    ("rate", None, None), ("victim", 13, "13"), ("trigger_size", 55, "55"), ("strategy", "nearest", "nearest"),
])
def test_yaml_values_are_converted_as_the_command_line_converts_them(name, value, expected):
    got = opts.convert(spec(name), value, f"--config f.yaml: {name}")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("name,value,needle", [
    ("allow_fewer", "maybe", "allowed: true or false"),
    ("allow_fewer", 2, "allowed: true or false"),
    ("rate", "abc", "allowed: a number"),
    ("rate", True, "allowed: a number"),
    ("seed", 1.7, "allowed: a whole number"),
    ("seed", None, "is empty; allowed: a whole number"),
    ("victim", ["car", "truck"], "is a list; allowed: a text"),
    ("matrix", {"person": "car"}, "is a mapping"),
    ("strategy", "nearst", "allowed: one of {random, nearest, fixed}"),
    ("alpha", None, "is empty"),
])
def test_bad_yaml_values_name_the_key_and_what_is_allowed(name, value, needle):
    with pytest.raises(ConfigError) as e:
        opts.convert(spec(name), value, f"--config f.yaml: {spec(name).key}")
    assert f"--config f.yaml: {spec(name).key} is" in str(e.value) and needle in str(e.value)


def test_read_config_file(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("rate: '0.5'\nprl-pixels: 3\nallow_fewer: 'no'\ntrigger-size: 5\n")
    assert opts.read_config_file(f, opts.ATTACK) == {"rate": 0.5, "prl_pixels": 3, "allow_fewer": False,
                                                     "trigger_size": "5"}
    f.write_text("rat: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown option 'rat' in --config .*; valid are \{rate, count, victim"):
        opts.read_config_file(f, opts.ATTACK)
    f.write_text("rate: 0.5\n")  # a test set has no rate
    with pytest.raises(ConfigError, match="unknown option 'rate'"):
        opts.read_config_file(f, opts.TESTSET)
    f.write_text("prl-pixels: 3\nprl_pixels: 4\n")
    with pytest.raises(ConfigError, match="'prl-pixels' is given twice"):
        opts.read_config_file(f, opts.ATTACK)
    f.write_text("- rate\n- 0.5\n")
    with pytest.raises(ConfigError, match="must hold a mapping of option: value, not a list"):
        opts.read_config_file(f, opts.ATTACK)
    f.write_text("rate: [0.5\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        opts.read_config_file(f, opts.ATTACK)
    f.write_text("")
    assert opts.read_config_file(f, opts.ATTACK) == {}
    with pytest.raises(ConfigError, match="--config file not found"):
        opts.read_config_file(tmp_path / "none.yaml", opts.ATTACK)


def test_merge_flags_win_over_the_file_which_wins_over_the_defaults():
    cli = opts.AttackOptions(seed=12, rate=None).record(opts.ATTACK)
    merged = opts.merge(opts.ATTACK, cli, {"seed"}, {"seed": 11, "rate": 0.5})
    assert (merged.seed, merged.rate, merged.alpha) == (12, 0.5, 1.0)


def test_record_and_resolve_kwargs():
    o = opts.AttackOptions(rate=0.1, no_hash=True, trigger_size="5x7", position="3,4", attack="nni", split="val")
    assert set(o.record(opts.ATTACK)) == {s.name for s in opts.specs(opts.ATTACK)}
    assert "split" not in o.record(opts.ATTACK) and o.record(opts.TESTSET)["split"] == "val"
    kw = o.resolve_kwargs(opts.TESTSET)
    assert kw["hash_files"] is False and "no_hash" not in kw and "attack" not in kw and "layout" not in kw
    assert kw["trigger_size"] == (5, 7) and kw["position"] == (3, 4) and kw["split"] == "val"


def test_parse_position():
    assert opts.parse_position(None) is None
    assert opts.parse_position(" Corner ") == "corner" and opts.parse_position("2,3") == (2, 3)
    with pytest.raises(ConfigError, match="--position 'middle' is not corner, top or 'y,x'"):
        opts.parse_position("middle")
