"""The monitoring parts on their own: input features, PSI and KS, the profile in a model file, the
prediction log (rotation, fork, torn and foreign records), and ``report monitor``'s bad inputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings, json_values
from hypothesis import given
from hypothesis import strategies as st

from scratchpilot import nn
from scratchpilot.cli import main
from scratchpilot.data.digit_image import DIGIT_FEATURES, digit_input_features, prepare_digit_with_features
from scratchpilot.monitor.drift import MIN_WINDOW, assess
from scratchpilot.monitor.predlog import PredictionLog, read_logs
from scratchpilot.monitor.profile import ProfileError, build_profile, model_id, read_profile
from scratchpilot.monitor.stats import bin_counts, bin_edges, kolmogorov_q, ks_2samp, psi


def bar(angle_degrees: float = 0.0, width: int = 3, size: int = 56) -> np.ndarray:
    """A light bar 30 px long and ``width`` wide on black, turned ``angle_degrees`` clockwise from upright."""
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2
    a = np.radians(angle_degrees)
    along = y * np.cos(a) - x * np.sin(a)
    across = x * np.cos(a) + y * np.sin(a)
    return ((np.abs(along) <= 15) & (np.abs(across) <= width / 2)).astype(np.uint8) * 255


def test_digit_features_measure_what_they_say():
    f = digit_input_features(bar(width=4))
    assert f["box_height"] == pytest.approx(30 / 56, abs=1e-6) and f["box_width"] == pytest.approx(4 / 56, abs=1e-6)
    assert f["centre_row"] == pytest.approx(0.5, abs=0.01) and f["centre_col"] == pytest.approx(0.5, abs=0.01)
    assert f["slant"] == pytest.approx(0.0, abs=0.5) and f["background"] == 0.0
    # 2·area/perimeter of a 4×30 bar: 2·120/68, over the long side 30
    assert f["stroke_width"] == pytest.approx(2 * 120 / 68 / 30, abs=1e-6)
    assert f["ink_mass"] == pytest.approx(120 / 56**2, abs=1e-6)
    turned = digit_input_features(bar(30.0, width=4))
    assert abs(turned["slant"]) == pytest.approx(30.0, abs=2.0)
    assert digit_input_features(255 - bar(width=4))["background"] == 1.0  # dark ink on white
    # the server's one pass gives the same numbers and the same digit as the two functions
    digit, features = prepare_digit_with_features(bar(width=4))
    assert features == f and list(features) == list(DIGIT_FEATURES)


def test_psi_and_ks_by_hand_and_against_scipy():
    # two bins, reference 50/50 of 1000, window 80/20 of 100; half a count of smoothing in each
    e = np.array([500.5, 500.5]) / 1001
    a = np.array([80.5, 20.5]) / 101
    assert psi([0.5, 0.5], 1000, [80, 20]) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi([0.5, 0.5], 1000, [50, 50]) < 1e-6
    assert kolmogorov_q(1.0) == pytest.approx(0.26999967, abs=1e-7)  # tabulated Q_KS(1)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.3):
        x, y = rng.normal(size=400), rng.normal(shift, size=300)
        d, p = ks_2samp(x, y)
        ref = stats.ks_2samp(x, y, method="asymp")
        assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=0.05, abs=1e-4)
    # a point mass gets a bin of its own: the inverted digits' white background is outside it
    edges = bin_edges(np.zeros(100))
    assert edges == [0.0] and bin_counts(np.ones(5), edges).tolist() == [0, 5]


def _profile(rng, n: int = 2000) -> dict:
    features = {"a": rng.normal(size=n), "b": rng.uniform(size=n)}
    probabilities = rng.dirichlet(np.ones(3) * 0.3, size=n)
    return build_profile("digits", features, probabilities=probabilities, labels=["x", "y", "z"], source="test")


def _records(rng, n: int, shift: float = 0.0, label_p=None) -> list[dict]:
    labels = rng.choice(["x", "y", "z"], size=n, p=label_p)
    return [{"t": float(i), "label": str(labels[i]), "confidence": float(rng.uniform(0.4, 1.0)),
             "features": {"a": float(rng.normal(shift)), "b": float(rng.uniform())}} for i in range(n)]


def test_a_window_gets_its_verdict():
    rng = np.random.default_rng(1)
    profile = _profile(rng)
    assert assess(profile, _records(rng, 500))["features"]["a"]["drift"] is False
    shifted = assess(profile, _records(rng, 500, shift=1.0))
    assert shifted["verdict"] == "drift" and shifted["features"]["a"]["drift"] and not shifted["features"]["b"]["drift"]
    skewed = assess(profile, _records(rng, 500, label_p=[0.9, 0.05, 0.05]))
    assert skewed["classes"]["drift"]
    assert assess(profile, _records(rng, MIN_WINDOW - 1, shift=3.0))["verdict"] == "too few"


def test_the_profile_travels_in_the_model_file(tmp_path):
    rng = np.random.default_rng(2)
    model = nn.Sequential([nn.Dense(4, 3)])
    model.metadata["profile"] = _profile(rng)
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    assert read_profile(loaded, "m.npz") == json.loads(json.dumps(model.metadata["profile"]))
    assert read_profile(nn.Sequential([nn.Dense(4, 3)]), "old.npz") is None  # an old file: no profile


@pytest.mark.parametrize(("change", "words"), [
    (lambda p: p.update(version=9), "version 9"),
    (lambda p: p.update(kind="audio"), "kind 'audio'"),
    (lambda p: p["features"]["a"].update(shares=[0.5]), "features.a has"),
    (lambda p: p["features"]["a"]["sample"].append("x"), "features.a holds a value"),
    (lambda p: p["features"]["a"].update(edges=[2.0, 1.0] + p["features"]["a"]["edges"][2:]), "must increase"),
    (lambda p: p["classes"].update(labels=["x"]), "as many labels"),
    (lambda p: p.update(features={}), "no features"),
])
def test_a_damaged_profile_is_named(change, words):
    profile = _profile(np.random.default_rng(3))
    change(profile)
    model = nn.Sequential([nn.Dense(4, 3)])
    model.metadata["profile"] = profile
    with pytest.raises(ProfileError, match="m.npz: its reference profile is unusable") as info:
        read_profile(model, "m.npz")
    assert words in str(info.value)


def test_the_log_rotates_keeps_its_parts_and_reads_back_in_time_order(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=2048, keep=3)
    for i in range(200):
        log.write({"t": 1000.0 + i, "model": "m", "label": str(i % 10), "confidence": 0.9})
    log.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 3 and all(f.stat().st_size <= 2048 for f in files)
    contents = read_logs([tmp_path], model_id="m")
    times = [r["t"] for r in contents.records]
    assert times == sorted(times) and times[-1] == 1199.0 and not contents.problems


def test_a_forked_child_writes_its_own_file(tmp_path):
    log = PredictionLog(tmp_path)
    log.write({"t": 1.0, "model": "m", "who": "parent"})
    pid = os.fork()
    if pid == 0:  # the child: its own series of files, never the parent's descriptor
        try:
            for i in range(50):
                log.write({"t": 2.0 + i, "model": "m", "who": "child"})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    log.write({"t": 100.0, "model": "m", "who": "parent"})
    log.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 2
    whos = [{json.loads(line)["who"] for line in f.read_text().splitlines()} for f in files]
    assert sorted(map(sorted, whos)) == [["child"], ["parent"]]
    assert len(read_logs([tmp_path]).records) == 52


def test_torn_corrupt_foreign_and_empty_logs_are_named(tmp_path):
    good = [json.dumps({"t": float(i), "model": "m", "label": "1", "confidence": 0.9}) for i in range(3)]
    (tmp_path / "a.jsonl").write_text("\n".join(good[:2] + ["{not json", good[2]]) + "\n")
    (tmp_path / "b.jsonl").write_text(good[0] + "\n" + '{"t": 5, "model": "m", "lab')  # torn by kill -9
    (tmp_path / "c.jsonl").write_text(json.dumps({"t": 9.0, "model": "other"}) + "\n[1, 2]\n")
    (tmp_path / "d.jsonl").write_text("")
    contents = read_logs([tmp_path], model_id="m")
    assert len(contents.records) == 4 and contents.torn == 1
    text = "\n".join(contents.problems)
    assert f"{tmp_path / 'a.jsonl'}:3: not a JSON record" in text
    assert f"{tmp_path / 'b.jsonl'}:2: a torn last record" in text
    assert f"{tmp_path / 'c.jsonl'}:2: a JSON list, not a record" in text
    assert f"{tmp_path / 'd.jsonl'}: empty" in text
    assert "1 records are from model other, not m" in text


@given(st.lists(json_values(1e9, "t", "features", "label", "confidence", nan=True), max_size=6),
       st.binary(max_size=64))
@fuzz_settings(60)
def test_fuzz_any_log_lines_read_and_assess_without_error(tmp_path_factory, values, junk):
    folder = tmp_path_factory.mktemp("fuzz-log")
    lines = [json.dumps(v) for v in values]
    lines += [json.dumps({"t": 1.0 + i, "model": "m", "label": v, "confidence": v, "features": {"a": v}})
              for i, v in enumerate(values)]
    (folder / "x.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + junk)
    contents = check_parser(lambda: read_logs([folder]), (), "x.jsonl")
    profile = _profile(np.random.default_rng(4), n=200)
    stats = assess(profile, contents.records * (MIN_WINDOW // max(1, len(contents.records)) + 1))
    assert stats["verdict"] in ("drift", "watch", "stable", "too few")


@pytest.fixture
def monitored(tmp_path):
    """A model with a profile, and a log of 300 of its answers."""
    rng = np.random.default_rng(5)
    model = nn.Sequential([nn.Dense(4, 3)])
    model.metadata["profile"] = _profile(rng)
    model.save(tmp_path / "m.npz")
    log = PredictionLog(tmp_path / "logs")
    for r in _records(rng, 300):
        log.write({**r, "t": 1_700_000_000 + r["t"], "model": model_id(tmp_path / "m.npz"), "status": 200,
                   "latency_ms": 1.0})
    log.close()
    return tmp_path


def test_report_monitor_covers_what_is_readable(monitored, capsys):
    root = monitored
    (root / "logs" / "broken.jsonl").write_text('{"t": 1700000001, "model": "someone-else"}\nnot json\n')
    bare = nn.Sequential([nn.Dense(4, 3)])
    bare.save(root / "bare.npz")
    args = ["report", "monitor", str(root / "logs"), "--window", "100req", "--out", str(root / "r.html")]
    assert main([*args, "--model", str(root / "m.npz"), "--json", str(root / "r.json")]) == 0
    report = json.loads((root / "r.json").read_text())
    assert [w["verdict"] for w in report["windows"]] != [] and report["records"] == 300
    assert any("broken.jsonl:2: not a JSON record" in p for p in report["problems"])
    assert any("from model someone-else" in p for p in report["problems"])
    # a model with no profile: the rest is still reported, and --fail-on-drift says drift was not assessed
    assert main([*args, "--model", str(root / "bare.npz"), "--json", str(root / "bare.json")]) == 0
    assert main([*args, "--model", str(root / "bare.npz"), "--fail-on-drift"]) == 4
    bare_report = json.loads((root / "bare.json").read_text())
    assert any("has no reference profile" in p for p in bare_report["problems"])
    assert any("another model" in p or "from model" in p for p in bare_report["problems"])
    # an empty folder, a missing one
    (root / "empty").mkdir()
    assert main(["report", "monitor", str(root / "empty"), "--model", str(root / "m.npz"), "--out",
                 str(root / "e.html"), "--json", str(root / "e.json")]) == 0
    assert json.loads((root / "e.json").read_text())["problems"] == ["no log files (*.jsonl) found"]
    capsys.readouterr()
    assert main(["report", "monitor", str(root / "nowhere"), "--model", str(root / "m.npz")]) == 2
    assert "nowhere: no such log file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0req", "-5req", "tenreq", "1h and a bit", ""])
def test_report_monitor_refuses_a_bad_window(text, monitored, capsys):
    with pytest.raises(SystemExit):
        main(["report", "monitor", str(monitored / "logs"), "--model", str(monitored / "m.npz"), "--window", text])
    assert "--window" in capsys.readouterr().err


def test_the_model_id_is_the_files_fingerprint(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert model_id(tmp_path / "a") == "ba7816bf8f01cfea"  # sha256("abc")
    assert math.isfinite(len(model_id(tmp_path / "a")))
