"""poisongen.manifest: assembly, integrity, fingerprints, load and diff, on hand-made records."""

import json

import pytest

from poisongen import manifest as mf
from poisongen.errors import PoisonGenError


def record(sid, top_left=(1, 2), out_sha="b" * 64):
    return {"id": sid, "top_left": list(top_left), "files": [{"path": f"{sid}.png", "source_sha256": "a" * 64,
                                                             "output_sha256": out_sha}]}


def build(samples, seed=0, created="2026-01-01T00:00:00+00:00"):
    return mf.build(config={"kind": "train", "seed": seed, "placement": {"upper": None}}, command=["poisongen"],
                    created_at=created, dataset={"layout": "cityscapes"}, counts={"poisoned": len(samples)},
                    samples=samples, skipped=[{"id": "z"}, {"id": "c"}], unchanged={"y.txt": "c" * 64, "x.txt": None},
                    source_files={"x.txt": None, "y.txt": "c" * 64, "s1.png": "a" * 64})


def test_build_sorts_and_fingerprints():
    m = build([record("s2"), record("s1")])
    assert [r["id"] for r in m["samples"]] == ["s1", "s2"] and [s["id"] for s in m["skipped"]] == ["c", "z"]
    assert list(m["unchanged_files"]) == ["x.txt", "y.txt"]
    assert mf.output_files(m) == {"x.txt": None, "y.txt": "c" * 64, "s1.png": "b" * 64, "s2.png": "b" * 64}
    assert m["output_fingerprint"] == mf.fingerprint(mf.output_files(m))
    assert mf.fingerprint({"a": None}) != mf.fingerprint({"a": "0" * 64})


def test_integrity_ignores_created_at_only():
    a, b = build([record("s1")]), build([record("s1")], created="2027-05-05T00:00:00+00:00")
    assert a["integrity"] == b["integrity"] == mf.integrity(a)
    assert build([record("s1", top_left=(1, 3))])["integrity"] != a["integrity"]
    assert build([record("s1")], seed=1)["integrity"] != a["integrity"]


def test_save_load_round_trip_and_bad_files(tmp_path):
    m = build([record("s1")])
    mf.save(m, tmp_path / mf.NAME)
    assert mf.load(tmp_path) == m and mf.load(tmp_path / mf.NAME) == m
    with pytest.raises(PoisonGenError, match="no manifest at"):
        mf.load(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PoisonGenError, match="is not valid JSON"):
        mf.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(PoisonGenError, match="is not a manifest: it holds a JSON list, not an object"):
        mf.load(tmp_path / "list.json")


def test_diff_names_what_differs():
    a = build([record("s1"), record("s2")])
    b = build([record("s1", top_left=(5, 5)), record("s3")], seed=4)
    d = mf.diff(a, b)
    assert d["config"] == {"seed": {"a": 0, "b": 4}}
    assert d["only_in_a"] == ["s2"] and d["only_in_b"] == ["s3"] and d["same"] == 0
    assert d["changed"] == {"s1": {"top_left": {"a": [1, 2], "b": [5, 5]}}}
    assert mf.diff(a, a)["changed"] == {} and mf.diff(a, a)["same"] == 2
