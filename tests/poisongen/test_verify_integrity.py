"""verify's integrity checks against a hostile editor of the output: injected or deleted samples with
the manifest resealed, --no-hash outputs, testset --from-manifest reuse, and signed manifests
(--sign / verify --key, HMAC-SHA256)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jsonschema
import pytest
from builders import one_line_error

from poisongen import manifest as mf
from poisongen.cli import app
from poisongen.signing import key_id, load_key

TRIG = ["--trigger-size", "5"]
SCHEMA = json.loads((Path(__file__).parents[2] / "manifests" / "schema.json").read_text())


def nni(run_cli, src, out, *extra):
    r = run_cli(app, ["nni", "--src", src, "--out", out, "--rate", "0.25", "--jobs", "1", "-q", *TRIG, *extra])
    assert r.exit_code == 0, r.stderr
    return mf.load(out)


def reseal(out, m):
    """What an attacker who edits the output does: recompute the plain sha256 integrity field."""
    m["integrity"] = mf.integrity(m)
    (out / mf.NAME).write_text(json.dumps(m))


def mismatches(result):
    assert result.exit_code == 1, (result.stdout, result.stderr)
    return [ln for ln in result.stdout.splitlines() if ln.startswith("MISMATCH")]


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key.bin"
    path.write_bytes(os.urandom(32))
    return path


def test_injected_sample_with_resealed_manifest_fails_verify_src(run_cli, tiny_synth, tmp_path):
    out = tmp_path / "out"
    m = nni(run_cli, tiny_synth, out)
    clean = next(p for p in m["unchanged_files"] if p.startswith("leftImg8bit/train/"))
    city = clean.split("/")[2]
    fake_img = f"leftImg8bit/train/{city}/{city}_999999_000019_leftImg8bit.png"
    fake_lab = f"gtFine/train/{city}/{city}_999999_000019_gtFine_labelTrainIds.png"
    label_of_clean = clean.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit", "_gtFine_labelTrainIds")
    assert (out / label_of_clean).is_file()
    shutil.copyfile(out / clean, out / fake_img)
    shutil.copyfile(out / label_of_clean, out / fake_lab)
    m["unchanged_files"][fake_img] = m["unchanged_files"][clean]
    m["unchanged_files"][fake_lab] = m["unchanged_files"][label_of_clean]
    reseal(out, m)
    assert run_cli(app, ["verify", out]).exit_code == 0, "without the source the resealed copy looks whole"
    lines = mismatches(run_cli(app, ["verify", out, "--src", tiny_synth]))
    assert any(fake_img in ln and "not in the source" in ln for ln in lines), lines
    assert any(fake_lab in ln for ln in lines), lines


def test_deleted_clean_sample_with_resealed_manifest_fails_verify_src(run_cli, tiny_synth, tmp_path):
    out = tmp_path / "out"
    m = nni(run_cli, tiny_synth, out)
    clean = next(p for p in m["unchanged_files"] if p.startswith("leftImg8bit/train/"))
    (out / clean).unlink()
    del m["unchanged_files"][clean]
    reseal(out, m)
    assert run_cli(app, ["verify", out]).exit_code == 0
    lines = mismatches(run_cli(app, ["verify", out, "--src", tiny_synth]))
    assert lines == [f"MISMATCH {clean}: in the source but not in the output's manifest (deleted from the copy)"]


def test_no_hash_output_says_how_many_files_verify_could_not_check(run_cli, tiny_synth, tmp_path):
    out = tmp_path / "out"
    m = nni(run_cli, tiny_synth, out, "--no-hash")
    n = sum(d is None for d in m["unchanged_files"].values())
    assert n == len(m["unchanged_files"]) > 0
    r = run_cli(app, ["verify", out])
    assert r.exit_code == 0 and f"{n} file(s) have no sha256 in the manifest (--no-hash)" in r.stdout
    assert "not checked" in r.stdout
    # with the source, an unhashed unchanged file is compared with the source's file
    victim = next(p for p in m["unchanged_files"] if p.endswith("_leftImg8bit.png"))
    data = bytearray((out / victim).read_bytes())
    data[-20] ^= 1
    (out / victim).write_bytes(bytes(data))
    assert run_cli(app, ["verify", out]).exit_code == 0, "the manifest alone cannot see it"
    lines = mismatches(run_cli(app, ["verify", out, "--src", tiny_synth]))
    assert lines == [f"MISMATCH {victim}: differs from the source file (an unhashed unchanged file was changed)"]


def test_testset_from_manifest_refuses_an_edited_manifest(run_cli, tiny_synth, tmp_path):
    test = tmp_path / "test"
    r = run_cli(app, ["testset", "--src", tiny_synth, "--out", test, "--strategy", "nearest", "-q", *TRIG])
    assert r.exit_code == 0, r.stderr
    m = mf.load(test)
    m["samples"][0]["top_left"][0] += 1
    (test / mf.NAME).write_text(json.dumps(m))
    again = tmp_path / "again"
    line = one_line_error(run_cli(app, ["testset", "--src", tiny_synth, "--out", again, "--from-manifest", test]))
    assert "does not match its integrity hash" in line and "refusing to reuse it" in line
    assert not again.exists()


def test_signed_manifest_round_trip_and_every_forgery_fails(run_cli, tiny_synth, tmp_path, key):
    plain = nni(run_cli, tiny_synth, tmp_path / "plain")
    out = tmp_path / "signed"
    m = nni(run_cli, tiny_synth, out, "--sign", key)
    sig = m["signature"]
    jsonschema.validate(m, SCHEMA)
    assert sig["algorithm"] == "hmac-sha256" and sig["key_id"] == key_id(load_key(key))
    assert m["integrity"] == plain["integrity"], "signing adds a field and changes nothing else"
    assert nni(run_cli, tiny_synth, tmp_path / "again", "--sign", key)["signature"] == sig, "deterministic"
    r = run_cli(app, ["verify", out, "--key", key])
    assert r.exit_code == 0 and "signature checked" in r.stdout

    # tampered and resealed: the plain check passes, the signature does not
    m["samples"][0]["top_left"][1] += 1
    reseal(out, m)
    assert run_cli(app, ["verify", out]).exit_code == 0, "a resealed plain sha256 is forged by anyone"
    assert mismatches(run_cli(app, ["verify", out, "--key", key]))[0] == (
        "MISMATCH manifest.json: signature does not match its content (the manifest was edited after signing)")

    # unsigned under --key
    assert mismatches(run_cli(app, ["verify", tmp_path / "plain", "--key", key])) == [
        "MISMATCH manifest.json: not signed, but --key was given (an unsigned manifest cannot be trusted under --key)"]
    # a stripped signature is an unsigned manifest
    stripped = mf.load(tmp_path / "again")
    del stripped["signature"]
    (tmp_path / "again" / mf.NAME).write_text(json.dumps(stripped))
    assert "not signed" in mismatches(run_cli(app, ["verify", tmp_path / "again", "--key", key]))[0]

    # a wrong key
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(32))
    line = mismatches(run_cli(app, ["verify", tmp_path / "signed", "--key", other]))[0]
    assert "signed with another key" in line and sig["key_id"] in line


def test_testset_sign_and_from_manifest_key(run_cli, tiny_synth, tmp_path, key):
    test = tmp_path / "test"
    r = run_cli(app, ["testset", "--src", tiny_synth, "--out", test, "-q", "--sign", key, *TRIG])
    assert r.exit_code == 0, r.stderr
    r = run_cli(app, ["testset", "--src", tiny_synth, "--out", tmp_path / "a", "--from-manifest", test,
                      "--key", key, "-q"])
    assert r.exit_code == 0, r.stderr
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(32))
    line = one_line_error(run_cli(app, ["testset", "--src", tiny_synth, "--out", tmp_path / "b",
                                        "--from-manifest", test, "--key", other]))
    assert "signed with another key" in line and not (tmp_path / "b").exists()


def test_scale_sign(run_cli, tiny_synth, tmp_path, key):
    out = tmp_path / "scaled"
    r = run_cli(app, ["scale", "--src", tiny_synth, "--scale", "0.5", "--out", out, "-q", "--jobs", "1", "--sign", key])
    assert r.exit_code == 0, r.stderr
    assert run_cli(app, ["verify", out, "--key", key]).exit_code == 0


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"short-secret\n", "holds 12 bytes; an HMAC-SHA256 key needs at least 32"),
])
def test_bad_key_files_are_one_line(run_cli, tiny_synth, tmp_path, content, message):
    path = tmp_path / "k"
    path.write_bytes(content)
    out = tmp_path / "out"
    line = one_line_error(run_cli(app, ["nni", "--src", tiny_synth, "--out", out, "--rate", "0.25", "--sign", path]))
    assert f"--sign key file {path} {message}" in line and not out.exists()
    nni(run_cli, tiny_synth, out)
    assert f"--key key file {path} {message}" in one_line_error(run_cli(app, ["verify", out, "--key", path]))


def test_key_file_keeps_its_bytes_less_one_newline(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"k" * 40 + b"\n")
    assert load_key(path) == b"k" * 40
    path.write_bytes(b"k" * 40 + b" \n")
    assert load_key(path) == b"k" * 40 + b" "


def test_integrity_of_an_unsigned_manifest_is_the_old_formula(run_cli, tiny_synth, tmp_path):
    """Manifests written before signing existed keep verifying: without a signature the integrity hash is
    still the sha256 of the canonical JSON less integrity and created_at."""
    m = nni(run_cli, tiny_synth, tmp_path / "out")
    body = {k: v for k, v in m.items() if k not in ("integrity", "created_at")}
    old = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert m["integrity"] == old == mf.integrity(m)
