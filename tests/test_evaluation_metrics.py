"""virnucpro.evaluation: the metrics equal scikit-learn's on the same scores (ties, imbalance,
degenerate calls), the FDR threshold is the lowest that reaches the target, and write_evaluation
writes every file it names."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from virnucpro.evaluation import metrics, outputs

sk = pytest.importorskip("sklearn.metrics")  # a test dependency (setup.cfg [test]); CI installs it


def labeled_sets():
    rng = np.random.default_rng(7)
    yield "separable", np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])
    yield "ties", np.array([0, 1, 0, 1, 1, 0], bool), np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.9])
    truth = rng.random(2000) < 0.3
    # float32 scores rounded to 3 decimals: many ties, as softmax outputs of a small model give
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * truth, 0.2), 0, 1), 3).astype(np.float32)
    yield "imbalanced with ties", truth, scores
    yield "no virus called", np.array([0, 1, 0, 1], bool), np.array([0.1, 0.2, 0.3, 0.4])
    yield "all called", np.array([0, 1, 1], bool), np.array([0.6, 0.7, 0.9])


@pytest.mark.parametrize("name,truth,scores", list(labeled_sets()), ids=[s[0] for s in labeled_sets()])
def test_metrics_equal_scikit_learn(name, truth, scores):
    called = scores >= 0.5
    got = metrics.binary_metrics(truth, scores)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(truth, called), abs=1e-12)
    assert got["precision"] == pytest.approx(sk.precision_score(truth, called, zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(sk.recall_score(truth, called, zero_division=0), abs=1e-12)
    assert got["f1"] == pytest.approx(sk.f1_score(truth, called, zero_division=0), abs=1e-12)
    assert got["mcc"] == pytest.approx(sk.matthews_corrcoef(truth, called), abs=1e-12)
    assert got["auroc"] == pytest.approx(sk.roc_auc_score(truth, scores), abs=1e-12)
    assert got["auprc"] == pytest.approx(sk.average_precision_score(truth, scores), abs=1e-12)
    tn, fp, fn, tp = sk.confusion_matrix(truth, called, labels=[False, True]).ravel()
    assert got["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def test_curves_equal_scikit_learn():
    _, truth, scores = list(labeled_sets())[2]
    fpr, tpr = metrics.roc_curve(truth, scores)
    sk_fpr, sk_tpr, _ = sk.roc_curve(truth, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    recall, precision = metrics.precision_recall_curve(truth, scores)
    sk_precision, sk_recall, _ = sk.precision_recall_curve(truth, scores)
    # scikit-learn lists them from the lowest threshold up and appends (recall 0, precision 1)
    np.testing.assert_allclose(recall[::-1][: len(sk_recall) - 1], sk_recall[:-1], atol=1e-12)
    np.testing.assert_allclose(precision[::-1][: len(sk_precision) - 1], sk_precision[:-1], atol=1e-12)


def test_given_calls_are_used_instead_of_the_threshold():
    truth = np.array([1, 0, 1, 0], bool)
    scores = np.array([0.9, 0.6, 0.4, 0.1])
    called = np.array([1, 0, 1, 0], bool)  # e.g. the per-chunk consensus rule
    assert metrics.binary_metrics(truth, scores, called=called)["accuracy"] == 1.0
    assert metrics.binary_metrics(truth, scores)["accuracy"] == 0.5


def test_one_class_has_no_auroc_or_auprc():
    got = metrics.binary_metrics(np.zeros(5, bool), np.linspace(0, 1, 5))
    assert got["auroc"] is None and got["auprc"] is None
    assert got["confusion"] == {"tp": 0, "fp": 3, "tn": 2, "fn": 0}  # 0.5, 0.75 and 1.0 are >= 0.5


def test_min_score_for_fdr_is_the_lowest_score_reaching_the_target():
    _, truth, scores = list(labeled_sets())[2]
    for target in (0.01, 0.05, 0.2):
        chosen = metrics.min_score_for_fdr(truth, scores, target)
        assert chosen is not None
        assert metrics.threshold_row(truth, scores >= chosen, chosen)["fdr"] <= target
        lower = np.unique(scores[scores < chosen])
        assert all(metrics.threshold_row(truth, scores >= t, t)["fdr"] > target for t in lower)
    assert metrics.min_score_for_fdr(np.array([0, 1], bool), np.array([0.9, 0.2]), 0.05) is None


def test_a_set_of_one_class_gets_no_recommended_min_score():
    # every call is right (FDR 0) or wrong (FDR 1) whatever the threshold: it says nothing of the classifier
    assert metrics.min_score_for_fdr(np.ones(4, bool), np.array([0.2, 0.5, 0.7, 0.9]), 0.05) is None
    assert metrics.min_score_for_fdr(np.zeros(4, bool), np.array([0.2, 0.5, 0.7, 0.9]), 0.05) is None
    result = outputs.write_evaluation(Path(tempfile.mkdtemp()), {"read": (np.ones(4, bool), np.array([0.2, 0.5, 0.7, 0.9]))},
                                      0.05, {})
    assert result["levels"]["read"]["min_score_for_target_fdr"] is None


def test_a_read_without_a_frame_is_never_a_candidate_threshold():
    """Reads without a stop-free frame carry a placeholder score (0) but `run --min-score 0` never
    calls them: when every scored read already meets the target, the lowest scored read's score
    is named, with the recall `run` gives, not --min-score 0 with recall 1."""
    truth = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.0, 0.0, 0.0], np.float32)  # the last two have no frame (scores: float32)
    scored = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    scores[4] = 0.05  # a scored 'other' read scoring low: calling it too breaks the target
    level = metrics.LevelScores(truth, scores, scored=scored)
    summary, table = outputs.evaluate_level(level, 0.05)
    assert summary["min_score_for_target_fdr"] == pytest.approx(0.6)
    assert summary["at_target_fdr"]["recall"] == pytest.approx(4 / 5) and summary["at_target_fdr"]["fp"] == 0
    assert summary["without_score"] == 2
    scores[4] = 0.65  # every scored read called at its lowest score would be FDR 1/5: 0.7 is named
    summary, _ = outputs.evaluate_level(metrics.LevelScores(truth, scores, scored=scored), 0.05)
    assert summary["min_score_for_target_fdr"] == pytest.approx(0.7)
    # all scored reads meet a loose target: the lowest scored score, never the placeholder
    summary, table = outputs.evaluate_level(metrics.LevelScores(truth, scores, scored=scored), 0.5)
    assert summary["min_score_for_target_fdr"] == pytest.approx(0.6)
    assert summary["at_target_fdr"]["recall"] == pytest.approx(4 / 5)
    assert all(row["tp"] + row["fp"] <= 5 for row in table)


def test_threshold_rows_compare_in_float32_as_min_score_does():
    # 0.7 rounds down in float32: a score of float32(0.7) is called by --min-score 0.7 (consensus.read_calls)
    score = np.float32(0.7)
    assert float(score) < 0.7
    row = metrics.threshold_table(np.array([True]), np.array([score]), [0.7])[0]
    assert row["tp"] == 1


def test_scores_must_be_finite_and_match_the_labels():
    with pytest.raises(ValueError, match="finite"):
        metrics.binary_metrics([True, False], [0.5, np.nan])
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        metrics.binary_metrics([True, False], [0.5, 0.1, 0.2])


def test_write_evaluation_writes_every_file_and_a_min_score_that_reads_back_as_float32(tmp_path):
    _, truth, scores = list(labeled_sets())[2]
    result = outputs.write_evaluation(tmp_path, {"chunk": (truth, scores), "read": (truth[:500], scores[:500])},
                                      0.05, {"classifier": "500_model.pth"})
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"metrics.json", "thresholds-chunk.tsv", "thresholds-read.tsv", "roc.png",
                     "precision-recall.png", "index.html"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    chosen = result["levels"]["chunk"]["min_score_for_target_fdr"]
    rows = (tmp_path / "thresholds-chunk.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["min_score", "precision", "recall", "fdr"]
    listed = [row.split("\t")[0] for row in rows[1:]]
    assert outputs.score_text(chosen) in listed
    # what the user types as --min-score selects exactly the same calls (consensus compares float32)
    typed = np.float32(float(outputs.score_text(chosen)))
    assert np.count_nonzero(scores >= typed) == result["levels"]["chunk"]["at_target_fdr"]["tp"] + \
        result["levels"]["chunk"]["at_target_fdr"]["fp"]
    page = (tmp_path / "index.html").read_text()
    assert f"--min-score {outputs.score_text(chosen)}" in page and "data:image/png;base64," in page
    with pytest.raises(ValueError, match="target FDR"):
        outputs.write_evaluation(tmp_path, {"chunk": (truth, scores)}, 1.5, {})


def test_the_demo_flag_is_in_metrics_json_and_on_the_page(tmp_path):
    truth, scores = np.array([0, 1, 1], bool), np.array([0.2, 0.7, 0.9])
    result = outputs.write_evaluation(tmp_path / "demo", {"read": (truth, scores)}, 0.05, {}, demo=True)
    assert result["demo_models"] is True and "RANDOM WEIGHTS" in result["virnucpro_demo"]
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["demo_models"] is True
    assert "MEANINGLESS" in (tmp_path / "demo" / "index.html").read_text()
    plain = outputs.write_evaluation(tmp_path / "real", {"read": (truth, scores)}, 0.05, {})
    assert plain["demo_models"] is False and "MEANINGLESS" not in (tmp_path / "real" / "index.html").read_text()


def test_the_comparison_page_lists_every_classifier_evaluated(tmp_path):
    truth = np.array([0, 1, 1, 0], bool)
    outputs.write_evaluation(tmp_path / "a-111111111111", {"read": (truth, np.array([0.1, 0.9, 0.8, 0.2]))}, 0.05,
                             {"classifier": "/m/a.safetensors", "chunk_length": 150})
    outputs.write_evaluation(tmp_path / "b-222222222222", {"read": (truth, np.array([0.9, 0.1, 0.8, 0.2]))}, 0.05,
                             {"classifier": "/m/b.pth", "chunk_length": 300}, demo=True)
    (tmp_path / "c-333333333333").mkdir()
    (tmp_path / "c-333333333333" / "metrics.json").write_text("{not json")
    assert outputs.write_comparison(tmp_path) == ["a-111111111111", "b-222222222222", "c-333333333333"]
    page = (tmp_path / "index.html").read_text()
    for text in ('href="a-111111111111/index.html"', "/m/a.safetensors", "/m/b.pth", "1.0000", "0.5000", "DEMO",
                 "c-333333333333", "unreadable"):
        assert text in page
