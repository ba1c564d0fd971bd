"""virnucpro.evaluation.calibration on synthetic scores whose class-conditional distributions are
known exactly (tests/synthetic_scores.py: beta mixtures, reads of 1, 2 and 4 chunks, frameless
reads more common in one class), so the true posterior of every read is known."""

import json
import math
import re

import numpy as np
import pytest

from synthetic_scores import TYPICAL, WEAK
from virnucpro.errors import VirnucproError
from virnucpro import calibration_meta as meta
from virnucpro.evaluation import calibration as cal

SHARES = (0.01, 0.1, 0.5, 0.9)
IDENTITY = {"classifier_sha256": "ab" * 32, "chunk_length": 150,
            "models": {"esm": {"name": "esm2_t6.pt", "digest": "e" * 64}, "dnabert": {"name": "dnabert-s", "digest": "d" * 64}}}


@pytest.fixture(scope="module")
def labelled():
    return TYPICAL.sample(np.random.default_rng(2024), 20_000, 0.5)


@pytest.fixture(scope="module")
def fitted(labelled):
    truth, scores, frames = labelled
    return cal.fit_calibration(truth, scores, frames, identity=IDENTITY)


# ------------------------------------------------------------------ the share and its interval

@pytest.mark.parametrize("share", SHARES)
def test_em_recovers_the_share_within_its_interval_across_seeds(fitted, share):
    """20 inputs of 5,000 reads per share: the estimate near the share, the interval around the
    estimate, and the share inside the interval in at least 17 of 20 (a 95% interval misses 4 or
    more of 20 with probability 1.6%)."""
    covered, errors = [], []
    for seed in range(20):
        _, scores, frames = TYPICAL.sample(np.random.default_rng([seed, int(share * 100)]), 5000, share)
        estimate = cal.estimate_share(fitted, scores, frames)
        assert estimate.low <= estimate.share <= estimate.high
        covered.append(estimate.low <= share <= estimate.high)
        errors.append(abs(estimate.share - share))
        if share >= 0.1:  # at 1% (about 50 viral reads) the lower end may be 2-fold lower in odds: warned
            assert estimate.warning is None
    assert sum(covered) >= 17, covered
    assert max(errors) <= 0.03 and np.mean(errors) <= 0.015, errors


def test_likelihood_interval_coverage_with_the_true_likelihood_ratios():
    """The interval's sampling part alone, with the exact λ: coverage of 200 inputs per share."""
    for share in (0.1, 0.5, 0.9):
        rng = np.random.default_rng([7, int(share * 10)])
        draws = [TYPICAL.sample(rng, 2000, share) for _ in range(200)]
        ratios = np.stack([np.exp(TYPICAL.log_ratio(s, k)) for _, s, k in draws])
        estimates = cal.maximum_likelihood_share(ratios)
        covered = [low <= share <= high for low, high in (cal.likelihood_interval(r, e) for r, e in zip(ratios, estimates))]
        assert np.mean(covered) >= 0.90, (share, np.mean(covered))
        assert abs(np.mean(estimates) - share) < 0.01  # no bias beyond noise: se of the mean ~0.0015


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_interval_coverage_with_a_fitted_calibration(fitted, share):
    """The whole interval (sampling and calibration parts) holds the share in >= 90% of 200 inputs."""
    rng = np.random.default_rng([11, int(share * 10)])
    covered = []
    for _ in range(200):
        _, scores, frames = TYPICAL.sample(rng, 1000, share)
        estimate = cal.estimate_share(fitted, scores, frames)
        covered.append(estimate.low <= share <= estimate.high)
    assert np.mean(covered) >= 0.90, np.mean(covered)


def test_em_fixed_point_is_the_maximum_likelihood_share(fitted):
    _, scores, frames = WEAK.sample(np.random.default_rng(3), 3000, 0.3)
    p = fitted.probability(scores, frames)
    ratios = cal.likelihood_ratios(p, fitted.labelled_share)
    estimate = float(cal.maximum_likelihood_share(ratios)[0])
    assert cal.em_steps(p, fitted.labelled_share) == pytest.approx(estimate, abs=1e-6)
    # the EM map leaves it in place, and it maximises the likelihood
    assert np.mean(cal.adjust_to_share(p, fitted.labelled_share, estimate)) == pytest.approx(estimate, abs=1e-9)
    for other in (estimate - 0.01, estimate + 0.01):
        assert cal.log_likelihood(other, ratios) < cal.log_likelihood(estimate, ratios)


def test_share_at_the_boundary_when_no_read_looks_viral():
    ratios = np.array([0.2, 0.5, 0.9, 0.3])
    assert cal.maximum_likelihood_share(ratios)[0] == 0.0
    low, high = cal.likelihood_interval(ratios, 0.0)
    assert low == 0.0 and 0 < high < 1
    assert cal.maximum_likelihood_share(1 / ratios)[0] == 1.0


def test_small_input_gets_a_wide_interval_and_a_warning_not_a_switch_off(fitted):
    _, scores, frames = TYPICAL.sample(np.random.default_rng(5), 60, 0.2)
    result = cal.calibrate_input(fitted, scores, frames, max_fdr=0.1)
    estimate = result.estimate
    assert estimate.share is not None and estimate.high - estimate.low > 0.1
    assert "60 reads" in estimate.warning and "fewer than 1,000" in estimate.warning
    assert result.probability.shape == (60,) and np.isfinite(result.fdr).all()


def test_a_weak_classifier_is_warned_about_on_every_input():
    truth, scores, frames = WEAK.sample(np.random.default_rng(4), 20_000, 0.5)
    weak = cal.fit_calibration(truth, scores, frames, replicates=4)
    assert weak.validation["auroc"] < 0.7
    _, scores, frames = WEAK.sample(np.random.default_rng(5), 20_000, 0.5)
    assert "weak classifier (AUROC 0.6" in cal.estimate_share(weak, scores, frames).warning


def test_a_given_share_replaces_the_estimate(fitted):
    _, scores, frames = TYPICAL.sample(np.random.default_rng(6), 500, 0.3)
    result = cal.calibrate_input(fitted, scores, frames, virus_share=0.02)
    assert result.estimate.method == "given" and result.estimate.share == 0.02
    assert np.allclose(result.probability, cal.adjust_to_share(fitted.probability(scores, frames),
                                                               fitted.labelled_share, 0.02))
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="--virus-share"):
            cal.calibrate_input(fitted, scores, frames, virus_share=bad)


# ------------------------------------------------------------------ probabilities

def test_share_equal_to_the_labelled_share_is_the_identity(fitted):
    _, scores, frames = TYPICAL.sample(np.random.default_rng(8), 2000, 0.5)
    p = fitted.probability(scores, frames)
    assert np.allclose(cal.adjust_to_share(p, fitted.labelled_share, fitted.labelled_share), p, rtol=0, atol=1e-12)
    given = cal.calibrate_input(fitted, scores, frames, virus_share=fitted.labelled_share)
    assert np.allclose(given.probability, p, rtol=0, atol=1e-12)


def test_prior_shift_is_bayes_rule():
    p = np.array([0.1, 0.5, 0.9])
    q = cal.adjust_to_share(p, 0.5, 0.1)
    expected = 0.1 * p / (0.1 * p + 0.9 * (1 - p))  # at π_L = 0.5, r/r̄ is the share's odds
    assert np.allclose(q, expected, rtol=1e-12)


@pytest.mark.parametrize("method", cal.METHODS)
def test_monotone_in_the_score_at_fixed_frame_count(labelled, method):
    truth, scores, frames = labelled
    calibration = cal.fit_calibration(truth, scores, frames, method, replicates=2)
    grid = np.linspace(0, 1, 2001)
    for k in range(1, 30):
        for share in (None, 0.01, 0.9):
            p = calibration.probability(grid, np.full(grid.size, k))
            if share is not None:
                p = cal.adjust_to_share(p, calibration.labelled_share, share)
            assert np.all(np.diff(p) >= 0), (method, k, share)
            assert np.all((p > 0) & (p < 1))


def test_calibrated_probabilities_approach_the_true_posterior(fitted):
    truth, scores, frames = TYPICAL.sample(np.random.default_rng(9), 20_000, 0.5)
    true_posterior = TYPICAL.posterior(scores, frames, 0.5)
    calibrated = fitted.probability(scores, frames)
    assert np.mean(np.abs(calibrated - true_posterior)) < 0.02
    assert np.mean(np.abs(scores - true_posterior)) > 0.1  # the raw score is not a probability


def test_frame_bands_follow_the_frame_count_and_frameless_reads_have_their_own_probability(fitted, labelled):
    truth, _, frames = labelled
    assert len(fitted.band_lows) > 1 and fitted.band_lows[0] == 1
    frameless = frames == 0
    expected = (truth[frameless].sum() + fitted.labelled_share) / (frameless.sum() + 1)
    assert fitted.fit.frameless == pytest.approx(expected)
    assert fitted.fit.frameless < 0.4  # fewer stop-free frames in the other class: evidence against virus
    p = fitted.probability(np.zeros(3), np.zeros(3, int))
    assert np.all(p == fitted.fit.frameless)
    # an input of frameless reads alone still gets a share, from them
    estimate = cal.estimate_share(fitted, np.zeros(2000), np.zeros(2000, int))
    assert estimate.share is not None and estimate.low <= estimate.share <= estimate.high


def test_chunk_level_calibration_has_one_band(labelled):
    truth, scores, frames = labelled
    chunks = frames > 0
    calibration = cal.fit_calibration(truth[chunks], scores[chunks], level="chunk", replicates=2)
    assert calibration.band_lows == (1,) and calibration.fit.frameless is None
    assert calibration.probability(scores[chunks]).shape == (int(chunks.sum()),)


def test_the_same_data_give_the_same_calibration(labelled):
    truth, scores, frames = labelled
    first = cal.fit_calibration(truth, scores, frames, replicates=4, seed=3)
    second = cal.fit_calibration(truth, scores, frames, replicates=4, seed=3)
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    _, s, k = TYPICAL.sample(np.random.default_rng(1), 1000, 0.2)
    assert cal.estimate_share(first, s, k) == cal.estimate_share(second, s, k)


def test_reliability_table_from_held_out_probabilities(fitted, labelled):
    rows = fitted.reliability
    assert sum(r["reads"] for r in rows) == labelled[0].size
    assert all(r["low"] <= r["mean_probability"] < r["high"] + 1e-12 for r in rows)
    # calibrated out of fold: every well-filled bin's observed share near its mean probability
    assert all(abs(r["virus_share"] - r["mean_probability"]) < 0.05 for r in rows if r["reads"] >= 500)


# ------------------------------------------------------------------ fdr and calls

def direct_fdr(q):
    return np.array([np.mean(1 - q[q >= qi]) for qi in q])


def test_fdr_column_equals_a_direct_computation():
    rng = np.random.default_rng(12)
    for q in (rng.random(500), np.round(rng.random(800), 2), np.array([0.5]), np.array([0.9, 0.9, 0.1, 0.9])):
        assert np.allclose(cal.fdr_column(q), direct_fdr(q), rtol=0, atol=1e-12)
    assert cal.fdr_column(np.zeros(0)).size == 0


def test_calls_at_max_fdr_are_exactly_the_reads_within_it(fitted):
    _, scores, frames = TYPICAL.sample(np.random.default_rng(13), 3000, 0.1)
    result = cal.calibrate_input(fitted, scores, frames, max_fdr=0.1)
    assert np.array_equal(result.calls, result.fdr <= 0.1)
    assert result.calls.any()
    called_q = result.probability[result.calls]
    assert np.mean(1 - called_q) <= 0.1  # the expected FDR of the call set
    assert called_q.min() >= result.probability[~result.calls].max()  # the most probable reads
    assert cal.calibrate_input(fitted, scores, frames, max_fdr=1.0).calls.all()
    for bad in (0, -0.5, 1.01, float("inf")):
        with pytest.raises(ValueError, match="--max-fdr"):
            cal.calls_at_max_fdr(result.fdr, bad)


# ------------------------------------------------------------------ the file

def test_json_round_trip(fitted, labelled, tmp_path):
    path = tmp_path / "calibration.json"
    fitted.save(path)
    loaded = cal.load_calibration(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.to_dict() == fitted.to_dict()
    _, scores, frames = TYPICAL.sample(np.random.default_rng(14), 1000, 0.3)
    assert np.array_equal(loaded.probability(scores, frames), fitted.probability(scores, frames))
    assert cal.estimate_share(loaded, scores, frames) == cal.estimate_share(fitted, scores, frames)
    document = json.loads(path.read_text())
    assert document["labelled_virus_share"] == labelled[0].mean() and document["method"] == "isotonic"
    assert document["counts"]["reads"] == 20_000 and document["counts"]["frameless"]["reads"] > 0
    assert document["classifier_sha256"] == "ab" * 32 and document["chunk_length"] == 150
    assert document["models"] == IDENTITY["models"]
    assert document["bands"][0]["frames"][0] == 1 and document["bands"][-1]["frames"][1] is None


def _edit(document: dict, path: str, value):
    keys = path.replace("[", ".").replace("]", "").split(".")
    target = document
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    target[int(last) if last.isdigit() else last] = value


@pytest.mark.parametrize("field,value", [
    ("labelled_virus_share", 0.0),
    ("labelled_virus_share", 1.2),
    ("labelled_virus_share", float("nan")),
    ("fit.bands.0.values.0", float("nan")),
    ("fit.bands.1.values.3", float("inf")),
    ("fit.bands.0.values", "reversed"),
    ("fit.bands.0.knots", "reversed"),
    ("replicates.3.bands.2.values.0", 1.0),
    ("fit.frameless_probability", 0.0),
    ("fit.frameless_probability", float("inf")),
    ("method", "spline"),
    ("format", "something-else"),
    ("version", 99),
    ("bands", []),
    ("counts.reads", -1),
])
def test_bad_parameters_are_refused_in_one_line_naming_the_file_and_field(fitted, tmp_path, field, value):
    document = fitted.to_dict()
    if value == "reversed":
        original = document
        for key in field.split("."):
            original = original[int(key)] if key.isdigit() else original[key]
        value = original[::-1]
    _edit(document, field, value)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(document))  # json writes NaN and Infinity as such; they must be refused
    with pytest.raises(VirnucproError) as caught:
        cal.load_calibration(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"field {re.sub(r'[.][0-9]+$', '', field)}: " in message.replace("[", ".").replace("]", "")


@pytest.mark.parametrize("method,field,value", [("platt", "a", -0.5), ("beta", "b", -1.0), ("beta", "c", float("nan"))])
def test_parametric_maps_refused_when_not_monotone_or_not_finite(labelled, tmp_path, method, field, value):
    truth, scores, frames = labelled
    document = cal.fit_calibration(truth, scores, frames, method, replicates=1).to_dict()
    document["fit"]["bands"][0][field] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(VirnucproError, match=rf"c\.json: field fit\.bands\[0\]\.{field}: "):
        cal.load_calibration(path)


def test_unreadable_or_missing_file_is_one_line(tmp_path):
    for path, expected in ((tmp_path / "missing.json", "no such calibration file"),
                           (tmp_path / "bad.json", "not a readable calibration file")):
        if path.name == "bad.json":
            path.write_text("{not json")
        with pytest.raises(VirnucproError, match=expected):
            cal.load_calibration(path)


def test_a_fifo_or_endless_file_is_refused_at_once_not_waited_on(tmp_path):
    """The calibration is read (and hashed) through the one bounded reader: a FIFO in its place
    would block for ever, /dev/zero would fill memory."""
    import os

    fifo = tmp_path / "calibration.json"
    os.mkfifo(fifo)
    endless = tmp_path / "zero.json"
    endless.symlink_to("/dev/zero")
    for path in (fifo, endless):
        with pytest.raises(VirnucproError, match=str(path)):
            cal.load_calibration(path)
        with pytest.raises(VirnucproError, match=str(path)):
            meta.file_sha256(path)


def test_a_calibration_for_another_classifier_chunk_length_or_models_is_refused_naming_both(fitted):
    document = fitted.to_dict()
    meta.check_identity(document, "c.json", IDENTITY)
    other_esm = {"esm": {"name": "esm2_t36_3B_UR50D.pt", "digest": "f" * 64}, "dnabert": IDENTITY["models"]["dnabert"]}
    for key, value, theirs, ours in (("classifier_sha256", "cd" * 32, "ab" * 8, "cd" * 8), ("chunk_length", 300, "150", "300"),
                                     ("models", other_esm, "esm2_t6.pt (eeee", "esm2_t36_3B_UR50D.pt (ffff")):
        with pytest.raises(VirnucproError) as caught:
            meta.check_identity(document, "c.json", {**IDENTITY, key: value})
        message = str(caught.value)
        assert message.startswith("c.json: calibrated for ") and "\n" not in message
        assert theirs in message and ours in message


def test_a_folder_model_and_a_hub_model_have_digests_whatever_their_path():
    files = {"config.json": "1" * 64, "model.safetensors": "2" * 64}
    assert meta.model_digest({"path": "/a/dnabert", "files": files}) == meta.model_digest({"path": "/b/x", "files": files})
    assert meta.model_digest({"path": "/a/e.pt", "sha256": "3" * 64}) == "3" * 64
    assert meta.model_digest({"name": "facebook/esm2"}) == "name:facebook/esm2"
    identity = meta.run_identity({"classifier": {"path": "/c.pth", "sha256": "9" * 64},
                                  "esm": {"path": "/m/esm2_t6.pt", "sha256": "3" * 64}, "dnabert": {"path": "/m/d", "files": files}}, 150)
    assert identity["classifier_sha256"] == "9" * 64 and identity["models"]["esm"] == {"name": "esm2_t6.pt", "digest": "3" * 64}


def test_fit_refuses_one_class_and_bad_scores():
    with pytest.raises(ValueError, match="both classes"):
        cal.fit_calibration(np.ones(10, bool), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.fit_calibration(np.r_[True, False], np.array([0.5, math.nan]))


@pytest.mark.parametrize("method", cal.METHODS)
def test_a_band_without_labelled_reads_is_uninformative(method):
    params = cal.fit_map(method, np.zeros(0), np.zeros(0), 0.3)
    assert np.allclose(cal.apply_map(method, params, np.array([0.0, 0.5, 1.0])), 0.3)


def test_a_one_class_end_block_counts_one_read_of_the_other_class():
    """Separable labelled reads: the top block holds no other, but about one is expected above the
    highest labelled other (order statistics), so it counts one: 500/501, not (500 + 0.5)/501;
    the bottom block likewise for viruses."""
    scores = np.linspace(0, 1, 1000)
    params = cal.fit_map("isotonic", scores, scores > 0.5, 0.5)
    assert params["values"][-1] == pytest.approx(500 / 501)
    assert params["values"][0] == pytest.approx(1 / 501)
    mixed = cal.fit_map("isotonic", scores, (scores > 0.5) & (np.arange(1000) < 999), 0.5)
    assert mixed["values"][-1] == pytest.approx((499 + 0.5) / 501)  # holds an other: the shrunk count
