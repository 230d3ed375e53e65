"""Appearance robustness: the simulator's other looks, the colour-blind preprocessing, the augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchpilot.car.augment import DEFAULT_AUGMENTATION, AugmentationError, Augmenter, box_blur
from scratchpilot.car.preprocess import (
    MIN_SPREAD,
    append_edges,
    default_spec,
    from_spec,
    normalise_frames,
    principal_grey,
)
from scratchpilot.car.sim.appearance import (
    CONDITIONS,
    STANDARD,
    TEST_COLOUR_DRAW,
    TRAINING_COLOURS,
    Appearance,
    condition,
)
from scratchpilot.car.sim.env import Simulator

# -- the simulator's looks ------------------------------------------------------------------------------

def test_other_colours_keep_the_track_and_change_the_picture():
    with Simulator(3) as standard, Simulator(3, appearance=condition("colours")) as coloured:
        assert np.array_equal(standard.track, coloured.track)  # the same geometry: only the paint differs
        colours = condition("colours").colours_for(3)
        assert np.allclose(coloured.core.road_color, colours["road"])
        # the same physics: one command moves both cars alike (and the start's zoom-in is over)
        for _ in range(60):
            standard.send("forward")
            coloured.send("forward")
        assert np.allclose(standard.car.hull.position, coloured.car.hull.position)
        frame, _ = coloured.read()
        plain, _ = standard.read()
        assert np.abs(frame.astype(int) - plain.astype(int)).mean() > 10
        # the road is painted: a good share of pixels carry the road colour (or its every-third-tile shade)
        road = np.rint(colours["road"]).astype(int)
        near = np.abs(frame[:84].reshape(-1, 3).astype(int) - road).max(axis=1) <= 8
        assert near.mean() > 0.05


def test_colour_draws_follow_carracing_and_never_repeat_the_test_draw():
    test = condition("colours")
    assert test.colours == TEST_COLOUR_DRAW and TRAINING_COLOURS.colours != TEST_COLOUR_DRAW
    draws = [test.colours_for(seed) for seed in range(50)]
    for colours in draws:
        assert np.all((colours["road"] >= 0) & (colours["road"] <= 210))
        difference = colours["grass"] - colours["background"]
        assert sorted(difference.tolist()) == pytest.approx([0.0, 0.0, 20.0])  # the grass: one channel 20 brighter
    assert test.colours_for(7)["road"].tolist() == condition("colours").colours_for(7)["road"].tolist()
    assert not np.allclose(test.colours_for(7)["road"], TRAINING_COLOURS.colours_for(7)["road"])
    assert STANDARD.colours_for(7) is None


def test_dusk_and_noise_change_the_camera_only():
    with Simulator(2) as plain, Simulator(2, appearance=condition("dusk")) as dusk, \
            Simulator(2, appearance=condition("noise")) as noisy:
        base = plain.read()[0].astype(float)
        dark = dusk.read()[0].astype(float)
        assert np.abs(dark - np.rint(base * 0.6)).max() <= 1
        first = noisy.read()[0].astype(float)
        assert noisy.read()[0] is noisy.read()[0]  # one camera image per simulated frame
        inside = (base > 40) & (base < 215)  # away from clipping
        assert (first - base)[inside].std() == pytest.approx(12.0, rel=0.1)
        noisy.send("forward")
        plain.send("forward")
        second = noisy.read()[0].astype(float) - plain.read()[0].astype(float)
        assert not np.allclose(second, first - base)  # fresh noise on every frame
    with Simulator(2, appearance=condition("noise")) as again:
        assert np.array_equal(again.read()[0].astype(float), first)  # and a rerun repeats it


def test_appearances_are_validated_and_named():
    assert list(CONDITIONS) == ["standard", "colours", "dusk", "noise"]
    with pytest.raises(ValueError, match="unknown appearance 'fog'; known: standard, colours, dusk, noise"):
        condition("fog")
    for bad, message in (({"colours": -1}, "colours must be a draw number"), ({"brightness": 0}, "brightness"),
                         ({"noise": 300}, "noise must be in")):
        with pytest.raises(ValueError, match=message):
            Appearance("bad", **bad)


# -- the preprocessing that discards colour and light --------------------------------------------------

def _track_picture(road, grass, size=(84, 96)) -> np.ndarray:
    """A road band a quarter of the picture wide on grass, with the simulator's crop in mind."""
    frame = np.empty((96, 96, 3), np.uint8)
    frame[:] = grass
    frame[:, 36:60] = road
    frame[84:] = 0  # the indicator bar
    return frame


def _spec(**options):
    return {**default_spec((96, 96, 3)), **options}


def test_principal_axis_sees_a_road_the_luma_weights_cannot():
    # red road on a green floor of the same luma: 0.299 R = 0.587 G
    road, grass = (196, 0, 0), (0, 100, 0)
    frame = _track_picture(road, grass)
    luma = from_spec(_spec(normalise="zscore"))(frame).reshape(42, 48)
    principal = from_spec(_spec(colour="principal", normalise="zscore"))(frame).reshape(42, 48)
    assert np.ptp(luma) < 0.2 * np.ptp(principal)
    # the minority (the road) on the dark side, the way the standard track looks
    assert principal[:, 20].mean() < principal[:, 2].mean()
    standard = from_spec(_spec(colour="principal", normalise="zscore"))(_track_picture((102,) * 3, (102, 230, 102)))
    assert np.allclose(principal, standard.reshape(42, 48), atol=1e-4)  # other colours, the same picture


def test_principal_grey_keeps_the_mean_luma_and_flips_to_a_dark_minority():
    rng = np.random.default_rng(0)
    for _ in range(20):
        road, grass = rng.integers(0, 211, 3), rng.integers(0, 211, 3)
        if np.linalg.norm(road - grass) < 30:
            continue
        pixels = _track_picture(road, grass)[:84].reshape(1, -1, 3).astype(np.float32)
        grey = principal_grey(pixels)[0, :, 0].reshape(84, 96)
        assert grey.mean() == pytest.approx((pixels[0] @ np.array([0.299, 0.587, 0.114])).mean(), abs=1e-3)
        assert grey[:, 40].mean() < grey[:, 5].mean()


def test_frame_normalisation_removes_dusk():
    frame = _track_picture((102,) * 3, (102, 230, 102))
    dusk = np.rint(frame * 0.6).astype(np.uint8)
    for mode in ("zscore", "stretch"):
        pre = from_spec(_spec(normalise=mode))
        assert np.allclose(pre(frame), pre(dusk), atol=0.02)
        plain = from_spec(_spec())
        assert not np.allclose(plain(frame), plain(dusk), atol=0.02)
    x = from_spec(_spec(normalise="zscore"))(frame)
    assert x.mean() == pytest.approx(0.0, abs=1e-5) and x.std() == pytest.approx(1.0, abs=1e-4)
    y = from_spec(_spec(normalise="stretch"))(frame)
    assert y.min() == 0.0 and y.max() == pytest.approx(1.0)


def test_a_flat_frame_stays_flat():
    values = np.full((1, 10, 1), 0.5, np.float32)
    values[0, 3] += 1e-4  # a speck of sensor noise is not blown up to full contrast
    for mode in ("zscore", "stretch"):
        out = normalise_frames(values, mode)
        assert np.ptp(out) <= 1.01e-4 / MIN_SPREAD


def test_edges_are_the_gradient_magnitude():
    image = np.zeros((1, 3 * 4, 1), np.float32)
    image[0].reshape(3, 4)[:, 2:] = 1.0  # a vertical step between columns 1 and 2
    out = append_edges(image, 3, 4)
    assert out.shape == (1, 12, 2)
    edges = out[0, :, 1].reshape(3, 4)
    # central differences: (1 - 0) / 2 on both sides of the step, 0 at the one-sided borders
    assert np.allclose(edges, [[0, 0.5, 0.5, 0]] * 3)
    pre = from_spec(_spec(edges=True))
    assert pre.output_shape((96, 96, 3)) == (42, 48, 2) and pre(np.zeros((96, 96, 3), np.uint8)).shape == (1, 4032)


def test_version_1_specs_still_load_as_luma_without_normalisation():
    old = {"version": 1, "input_shape": [96, 96, 3], "crop": "carracing", "downsample": 2, "grayscale": True,
           "scale": True}
    pre = from_spec(old)
    assert pre.spec["colour"] == "luma" and pre.spec["normalise"] is None and pre.spec["edges"] is False
    frame = _track_picture((102,) * 3, (102, 230, 102))
    assert np.array_equal(pre(frame), from_spec(_spec())(frame))


# -- augmentation ---------------------------------------------------------------------------------------

def test_the_identity_spec_changes_nothing():
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(Augmenter({})(frames, np.random.default_rng(1)), frames)


def test_one_look_per_call_and_fresh_noise_per_frame():
    frame = np.random.default_rng(0).integers(30, 220, (8, 8, 3), dtype=np.uint8)
    frames = np.stack([frame, frame])
    no_noise = Augmenter({**DEFAULT_AUGMENTATION, "noise": [0.0, 0.0]})
    out = no_noise(frames, np.random.default_rng(3))
    assert np.array_equal(out[0], out[1]) and not np.array_equal(out[0], frame)
    noisy = Augmenter({"noise": [10.0, 10.0]})(frames, np.random.default_rng(3))
    assert not np.array_equal(noisy[0], noisy[1])
    assert (noisy.astype(float) - frames).std() == pytest.approx(10.0, rel=0.15)
    again = Augmenter({"noise": [10.0, 10.0]})(frames, np.random.default_rng(3))
    assert np.array_equal(noisy, again)  # a seeded generator repeats the run


def test_each_setting_does_what_it_says():
    frame = np.full((1, 6, 6, 3), 100, np.uint8)
    rng = np.random.default_rng(0)
    assert np.all(Augmenter({"brightness": [0.5, 0.5]})(frame, rng) == 50)
    assert np.all(Augmenter({"contrast": [2.0, 2.0]})(frame, rng) == np.rint((100 / 255 - 0.5) * 2 * 255 + 127.5))
    assert np.all(Augmenter({"gamma": [2.0, 2.0]})(frame, rng) == np.rint((100 / 255) ** 2 * 255))
    shifted = Augmenter({"colour_shift": 30.0})(frame, rng)
    assert len(np.unique(shifted[0, 0, 0])) == 3 and np.abs(shifted.astype(int) - 100).max() <= 30
    stripes = np.zeros((1, 3, 3, 1), np.float32)
    stripes[0, :, 1] = 9.0
    assert np.allclose(box_blur(stripes)[0, 1, :, 0], [3.0, 3.0, 3.0])


@pytest.mark.parametrize("spec, message", [
    ({"copies": 0}, "'copies' must be an integer from 1 to 16"),
    ({"copies": True}, "'copies' must be an integer"),
    ({"brightness": [1.2, 0.8]}, "'brightness' must be \\[low, high\\]"),
    ({"noise": [0, "loud"]}, "'noise' must be \\[low, high\\]"),
    ({"gamma": 1.0}, "'gamma' must be \\[low, high\\]"),
    ({"blur": 1.5}, "'blur' must be a number from 0 to 1.0"),
    ({"colour_shift": float("nan")}, "'colour_shift' must be a number"),
    ({"seed": -1}, "'seed' must be an integer >= 0"),
    ({"hue": 0.1}, "unknown augmentation field\\(s\\) 'hue'"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_augmentation_specs_are_refused_by_field(spec, message):
    with pytest.raises(AugmentationError, match=message):
        Augmenter(spec)


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=5),
                     lambda children: st.lists(children, max_size=3), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*DEFAULT_AUGMENTATION, "other"]), _json, max_size=5))
def test_any_augmentation_spec_is_accepted_or_refused_clearly(spec):
    try:
        augmenter = Augmenter(spec)
    except AugmentationError:
        return
    json.dumps(augmenter.spec)  # an accepted spec is stored as JSON
    frames = np.full((2, 4, 4, 3), 128, np.uint8)
    assert augmenter(frames, np.random.default_rng(0)).dtype == np.uint8


def test_training_stores_the_augmentation_and_reports_both_accuracies(tmp_path):
    from scratchpilot.car.pilot import Pilot
    from scratchpilot.car.sim.runs import record_expert
    from scratchpilot.car.training import train_pilot
    from scratchpilot.nn import load

    path, _ = record_expert(tmp_path, [1000, 1001, 1002, 1003, 1004, 1005], max_steps=60, progress=False,
                            appearance=lambda seed: TRAINING_COLOURS if seed % 2 else STANDARD)
    meta = json.loads((path / "manifest.json").read_text())["meta"]
    assert meta["appearance"]["1001"]["colours"] == TRAINING_COLOURS.colours
    assert meta["appearance"]["1000"]["colours"] is None
    augmentation = {**DEFAULT_AUGMENTATION, "copies": 2}
    plain, plain_report = train_pilot([path], epochs=1, progress=False)
    model, report = train_pilot([path], epochs=1, progress=False, augmentation=augmentation,
                                preprocess_options={"colour": "principal", "normalise": "zscore"})
    assert report["validation_frames"] == plain_report["validation_frames"]  # validation: frames as recorded
    assert report["validation_groups"] == plain_report["validation_groups"]
    assert 0.0 <= report["validation_accuracy_augmented"] <= 1.0 and report["augmented_copies"] == 2
    model.save(tmp_path / "pilot.npz")
    loaded = load(tmp_path / "pilot.npz")
    assert loaded.metadata["augmentation"] == Augmenter(augmentation).spec
    assert loaded.metadata["preprocessing"]["colour"] == "principal"
    assert plain.metadata["augmentation"] is None
    assert Pilot(loaded).preprocess.spec["normalise"] == "zscore"  # driving rebuilds the same preprocessing
    # early stopping keeps the epoch of the lowest validation loss, and reports that epoch
    stopped, stopped_report = train_pilot([path], epochs=4, progress=False, patience=1)
    history = stopped.history
    best = int(np.argmin(history["val_loss"]))
    assert stopped_report["best_epoch"] == best and stopped_report["epochs_run"] == len(history["loss"])
    assert stopped_report["validation_accuracy"] == history["val_accuracy"][best]


_spec_values = st.none() | st.booleans() | st.integers(-3, 100) | st.sampled_from(
    ["luma", "principal", "zscore", "stretch", "carracing", "x"]) | st.lists(st.integers(-2, 100), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "input_shape", "crop", "downsample", "grayscale", "colour",
                                        "scale", "normalise", "edges", "size", "other"]), _spec_values, max_size=6))
def test_any_preprocessing_spec_is_accepted_or_refused_clearly(spec):
    from scratchpilot.car.preprocess import PreprocessSpecError

    try:
        pre = from_spec(spec)
        out = pre(np.full((96, 96, 3), 128, np.uint8))
    except PreprocessSpecError:
        return
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert from_spec(json.loads(json.dumps(pre.spec))).spec == pre.spec  # the stored spec rebuilds itself
