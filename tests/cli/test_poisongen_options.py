"""poisongen's command line as derived from the options declaration: flags and --config YAML give
the same run, bad YAML values and click usage errors are one line with exit code 2, the run options
mean the same on every subcommand, choices are shown in --help."""

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from poisongen import manifest as mf
from poisongen.cli import app
from poisongen.datasets.synthetic import generate

COMMANDS = typer.main.get_command(app).commands
ATTACKS = ["baseline", "nni", "prl", "badnets", "fgba", "o2o", "o2b", "b2o", "b2b", "instance", "conditional"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt-src") / "synthetic"
    generate(root, train=12, val=4, size=(64, 128), seed=3, jobs=1)
    return root


def one_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_config_file_gives_the_run_the_flags_give(run_cli, src, tmp_path):
    flags = ["--rate", "0.5", "--seed", "4", "--strategy", "nearest", "--upper", "40", "--prl-pixels", "7",
             "--trigger-size", "5x6", "--allow-fewer", "--no-hash", "--link", "hardlink", "--metric", "chessboard"]
    r = run_cli(app, ["baseline", "--src", src, "--out", tmp_path / "a", "-q", "-j", "1", *flags])
    assert r.exit_code == 0, r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rate: '0.5'\nseed: 4\nstrategy: nearest\nupper: 40\nprl-pixels: 7\ntrigger_size: 5x6\n"
                   "allow-fewer: yes\nno-hash: true\nlink: hardlink\nmetric: chessboard\n")
    r = run_cli(app, ["baseline", "--src", src, "--out", tmp_path / "b", "-q", "-j", "1", "--config", cfg])
    assert r.exit_code == 0, r.stderr
    a, b = mf.load(tmp_path / "a"), mf.load(tmp_path / "b")
    assert a["config"] == b["config"] and a["options"] == b["options"]
    assert a["output_fingerprint"] == b["output_fingerprint"]
    assert a["options"]["allow_fewer"] is True and a["options"]["victim"] is None


def test_allow_fewer_no_is_read_as_false(run_cli, src, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("allow-fewer: 'no'\nrate: 0.25\ntrigger-size: 5\n")
    r = run_cli(app, ["nni", "--src", src, "--out", tmp_path / "o", "-q", "-j", "1", "--config", cfg])
    assert r.exit_code == 0, r.stderr
    m = mf.load(tmp_path / "o")
    assert m["config"]["allow_fewer"] is False and m["options"]["allow_fewer"] is False


@pytest.mark.parametrize("text,needle", [
    ("allow-fewer: maybe\n", "allow-fewer is 'maybe'; allowed: true or false"),
    ("rate: abc\n", "rate is 'abc'; allowed: a number"),
    ("seed: 1.7\nrate: 0.25\n", "seed is 1.7; allowed: a whole number"),
    ("victim: [car, truck]\nrate: 0.25\n", "victim is a list; allowed: a text"),
    ("metric: manhattan\nrate: 0.25\n", "metric is 'manhattan'; allowed: one of {euclidean, chessboard}"),
    ("rat: 0.25\n", "unknown option 'rat' in --config"),
    ("[1, 2]\n", "must hold a mapping"),
])
def test_bad_config_values_are_one_line_naming_the_key(run_cli, src, tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    line = one_line(run_cli(app, ["nni", "--src", src, "--out", tmp_path / "o", "--config", cfg]))
    assert needle in line and not (tmp_path / "o").exists()


def test_testset_reads_its_options_from_yaml_too(run_cli, src, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("strategy: nearest\nupper: 40\ntrigger-size: 5\nseed: 2\n")
    r = run_cli(app, ["testset", "--src", src, "--out", tmp_path / "t", "-q", "-j", "1", "--config", cfg])
    assert r.exit_code == 0, r.stderr
    m = mf.load(tmp_path / "t")
    assert (m["config"]["attack"], m["config"]["placement"]["upper"], m["seed"]) == ("nni", 40.0, 2)
    cfg.write_text("rate: 0.5\n")
    assert "unknown option 'rate'" in one_line(
        run_cli(app, ["testset", "--src", src, "--out", tmp_path / "u", "--config", cfg]))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_misspelled_option_is_one_line_on_every_command(run_cli, command):
    line = one_line(run_cli(app, [command, "--bogus-option", "1"]))
    assert "No such option: --bogus-option" in line and f"poisongen {command} --help" in line.replace(
        "python -m poisongen.cli", "poisongen")


@pytest.mark.parametrize("args,needle", [
    (["nni", "--rate", "abc"], "Invalid value for '--rate'"),
    (["nni", "--rate", "abc"], "got 'abc'"),
    (["nni", "--rate", "0.1"], "Missing option '--src'"),
    (["testset", "--src", "x", "--strategy", "closest", "--out", "o"], "'closest' is not one of 'random', 'nearest'"),
    (["nni", "--src", "x", "--rate", "0.1", "--jobs", "-1"], "Invalid value for '--jobs' / '-j'"),
    (["nni", "--src", "x", "--rate", "0.1", "-j", "100000"], "Invalid value for '--jobs' / '-j'"),
    (["verify"], "Missing argument"),
    (["nnii"], "No such command 'nnii'"),
])
def test_usage_errors_are_one_line_exit_2(run_cli, args, needle):
    assert needle in one_line(run_cli(app, args))


def test_usage_errors_from_the_console_script():
    exe = Path(sys.executable).parent / "poisongen"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "poisongen.cli"]
    r = subprocess.run([*cmd, "nni", "--rate", "abc", "--src", "x"], capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Invalid value for '--rate'" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "╭" not in r.stderr


@pytest.mark.parametrize("name,flags", [("jobs", ["--jobs", "-j"]), ("quiet", ["--quiet", "-q"]),
                                        ("overwrite", ["--overwrite"])])
def test_run_options_mean_the_same_on_every_subcommand(name, flags):
    having = {c: p for c, cmd in COMMANDS.items() for p in cmd.params if p.name == name}
    assert len(having) >= (3 if name == "quiet" else 5)
    assert {tuple(p.opts) for p in having.values()} == {tuple(flags)}
    assert len({p.help for p in having.values()}) == 1
    assert len({p.default for p in having.values()}) == 1
    for c in ATTACKS + ["testset", "scale"]:
        assert c in having, c


def test_choices_are_shown_in_help():
    from typer.testing import CliRunner

    def help_text(command):
        r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})  # no wrapped choices
        assert r.exit_code == 0
        return r.stdout

    text = help_text("nni")
    for choice in ("random|nearest|fixed", "euclidean|chessboard", "copy|hardlink|symlink", "nearest|random",
                   "cityscapes|voc|ade20k|folder|synthetic"):
        assert choice in text, choice
    assert "baseline|nni|prl|badnets|fgba" in help_text("testset")
    assert "copy|hardlink|symlink" in help_text("scale")


def test_every_attack_command_has_every_attack_option():
    from poisongen import options as opts

    names = {s.name for s in opts.specs(opts.ATTACK)}
    for a in ATTACKS:
        assert names <= {p.name for p in COMMANDS[a].params}, a
    assert {s.name for s in opts.specs(opts.TESTSET)} <= {p.name for p in COMMANDS["testset"].params}
