"""CostSensitiveClassifier against scikit-learn's estimator checks and the Bayes decision with the
true probabilities of synthetic problems."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import (
    check_classifiers_classes,
    check_classifiers_train,
    check_estimators_pickle,
    check_fit_idempotent,
    parametrize_with_checks,
)

import rwwce
from rwwce.costs import CostMatrix
from rwwce.metrics import bayes_decision, real_world_cost
from rwwce.sklearn import CostSensitiveClassifier

COSTS3 = np.array([[0, 1, 1], [8, 0, 2], [15, 4, 0]], dtype=float)


def three_class_problem(n, seed, copies=False):
    """X ~ N(0, I); P(y | X) is a known softmax of a linear function (optionally with noisy
    copies of the features, which make naive Bayes over-confident)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    logits = np.stack([np.zeros(n), 1.5 * x[:, 0] - 1.0, 1.2 * x[:, 1] - 1.0], 1)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    y = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    if copies:
        x = np.hstack([x] + [x + 0.3 * rng.normal(size=x.shape) for _ in range(2)])
    return x, y, p


def expected_cost(decisions, p, c):
    """The expected cost under the true probabilities: less noisy than a realised cost."""
    return float((p @ c)[np.arange(len(decisions)), decisions].mean())


# ---------------------------------------------------------------------------- estimator checks
@parametrize_with_checks([CostSensitiveClassifier(LogisticRegression())])
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.parametrize(
    "calibration, check",
    [
        ("sigmoid", check_classifiers_train),
        ("isotonic", check_estimators_pickle),
        ("temperature", check_classifiers_train),
        ("temperature", check_classifiers_classes),
        ("temperature", check_fit_idempotent),
        ("temperature", check_estimators_pickle),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_estimator_checks_with_calibration(calibration, check):
    est = CostSensitiveClassifier(LogisticRegression(), calibration=calibration, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(type(est).__name__, est)


def test_import_rwwce_does_not_import_scikit_learn():
    code = (
        "import sys, rwwce; assert 'sklearn' not in sys.modules;"
        "rwwce.sklearn.CostSensitiveClassifier; assert 'sklearn' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------- decisions
def test_binary_cost_is_within_5_percent_of_the_bayes_decision_with_true_probabilities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24_000, 3))
    p1 = 1 / (1 + np.exp(-(x @ [1.0, -2.0, 0.5] - 2.5)))  # rare positives
    y = (rng.random(24_000) < p1).astype(int)
    c = np.array([[0.0, 1.0], [25.0, 0.0]])
    clf = CostSensitiveClassifier(LogisticRegression(), costs=c).fit(x[:4000], y[:4000])
    d = clf.predict(x[4000:])
    p = np.stack([1 - p1, p1], 1)[4000:]
    best = expected_cost(bayes_decision(p1[4000:], c).numpy(), p, c)
    assert expected_cost(d, p, c) <= 1.05 * best
    # the arg-max of the same model is far worse: the costs matter
    assert expected_cost(clf.estimator_.predict(x[4000:]), p, c) > 1.5 * best


@pytest.mark.parametrize(
    "base, calibration",
    [(LogisticRegression(), None), (GaussianNB(), "temperature"), (GaussianNB(), "isotonic")],
    ids=["logistic", "nb-temperature", "nb-isotonic"],
)
def test_multiclass_cost_is_within_5_percent_of_the_bayes_decision(base, calibration):
    x, y, p = three_class_problem(16_000, seed=1, copies=True)
    clf = CostSensitiveClassifier(base, COSTS3, calibration=calibration).fit(x[:4000], y[:4000])
    best = expected_cost(bayes_decision(p[4000:], COSTS3).numpy(), p[4000:], COSTS3)
    assert expected_cost(clf.predict(x[4000:]), p[4000:], COSTS3) <= 1.05 * best


def test_calibration_rescues_an_overconfident_model():
    """Naive Bayes on correlated copies of the features is over-confident: deciding on its raw
    probabilities costs 30% more than the Bayes decision, temperature scaling fixes it."""
    x, y, p = three_class_problem(16_000, seed=2, copies=True)
    best = expected_cost(bayes_decision(p[4000:], COSTS3).numpy(), p[4000:], COSTS3)
    raw = CostSensitiveClassifier(GaussianNB(), COSTS3).fit(x[:4000], y[:4000])
    cal = CostSensitiveClassifier(GaussianNB(), COSTS3, calibration="temperature", cv=4)
    cal.fit(x[:4000], y[:4000])
    assert expected_cost(raw.predict(x[4000:]), p[4000:], COSTS3) > 1.15 * best
    assert expected_cost(cal.predict(x[4000:]), p[4000:], COSTS3) < 1.05 * best
    assert float(cal.calibrator_.temperature) > 1.5  # softened
    probs = cal.predict_proba(x[4000:])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probs.argmax(1), raw.predict_proba(x[4000:]).argmax(1))


def test_predict_is_the_bayes_decision_of_predict_proba_and_score_is_minus_the_cost():
    x, y, _ = three_class_problem(600, seed=3)
    clf = CostSensitiveClassifier(LogisticRegression(), COSTS3).fit(x, y)
    probs = clf.predict_proba(x)
    np.testing.assert_allclose(probs, clf.estimator_.predict_proba(x))
    pred = clf.predict(x)
    np.testing.assert_array_equal(pred, (probs @ COSTS3).argmin(1))
    assert clf.score(x, y) == pytest.approx(-float(real_world_cost(y, pred, COSTS3)), rel=1e-12)
    w = np.random.default_rng(0).uniform(0, 2, len(y))
    brute = sum(w[n] * COSTS3[y[n], pred[n]] for n in range(len(y))) / w.sum()
    assert clf.score(x, y, sample_weight=w) == pytest.approx(-brute, rel=1e-12)
    # no costs: the 0-1 cost, i.e. the arg-max and minus the error rate
    plain = CostSensitiveClassifier(LogisticRegression()).fit(x, y)
    np.testing.assert_array_equal(plain.predict(x), probs.argmax(1))
    assert plain.score(x, y) == pytest.approx(-(plain.predict(x) != y).mean())


def test_string_labels_and_a_named_cost_matrix():
    x, y, _ = three_class_problem(900, seed=4)
    names = np.array(["cat", "dog", "eel"])[y]
    # rows named in another order than the sorted labels: indexed by name
    cm = CostMatrix(COSTS3[[2, 0, 1]][:, [2, 0, 1]], classes=["eel", "cat", "dog"])
    clf = CostSensitiveClassifier(LogisticRegression(), cm).fit(x, names)
    np.testing.assert_array_equal(clf.costs_, COSTS3)
    by_index = CostSensitiveClassifier(LogisticRegression(), COSTS3).fit(x, y)
    np.testing.assert_array_equal(
        clf.predict(x), np.array(["cat", "dog", "eel"])[by_index.predict(x)]
    )
    # a training set that lacks a class still gets the right rows from a named matrix
    two = names != "dog"
    clf2 = CostSensitiveClassifier(LogisticRegression(), cm).fit(x[two], names[two])
    np.testing.assert_array_equal(clf2.costs_, COSTS3[np.ix_([0, 2], [0, 2])])


def test_a_fold_missing_a_class_is_scored_with_the_whole_named_matrix():
    """cross_val_score over unshuffled folds, one of which holds the only samples of a class in
    its held-out part: the estimator's own score equals make_cost_scorer with the named matrix
    (its decisions use the fitted classes' rows; the cost of the missing class is its own)."""
    x, y, _ = three_class_problem(300, seed=8)
    names = np.array(["cat", "dog", "eel"])[y]
    order = np.argsort(y, kind="stable")  # the last fold holds most of "eel"
    x, names = x[order], names[order]
    cm = CostMatrix(COSTS3, classes=["cat", "dog", "eel"])
    clf = CostSensitiveClassifier(LogisticRegression(), cm)
    folds = KFold(3)
    own = cross_val_score(clf, x, names, cv=folds, error_score="raise")
    scorer = rwwce.metrics.make_cost_scorer(cm)
    theirs = cross_val_score(clf, x, names, cv=folds, scoring=scorer, error_score="raise")
    np.testing.assert_allclose(own, theirs, rtol=1e-12)
    train, test = next((a, b) for a, b in folds.split(x) if "eel" not in names[a])
    fitted = clone(clf).fit(x[train], names[train])
    assert "eel" in names[test]
    pred = fitted.predict(x[test])
    rows = {"cat": 0, "dog": 1, "eel": 2}
    brute = np.mean([COSTS3[rows[t], rows[p]] for t, p in zip(names[test], pred, strict=True)])
    assert fitted.score(x[test], names[test]) == pytest.approx(-brute, rel=1e-12)


def test_a_cost_matrix_without_names_is_positional_like_an_array():
    """Without class names a CostMatrix's rows follow the sorted labels, as an array's: its
    default names ("0", "1", ...) never map labels by name, so a fit on labels {1, 2} does not
    silently take the rows "1" and "2" of a matrix meant for the labels {1, 2, 3}."""
    x, y, _ = three_class_problem(300, seed=9)
    labels = y + 1  # 1, 2, 3
    unnamed = CostMatrix(COSTS3)
    full = CostSensitiveClassifier(LogisticRegression(), unnamed).fit(x, labels)
    np.testing.assert_array_equal(full.costs_, COSTS3)
    two = labels != 3
    for costs in (unnamed, COSTS3):
        with pytest.raises(ValueError, match=r"costs has shape \(3, 3\) but y has 2 classes"):
            CostSensitiveClassifier(LogisticRegression(), costs).fit(x[two], labels[two])
    named = CostMatrix(COSTS3, classes=["1", "2", "3"])
    fold = CostSensitiveClassifier(LogisticRegression(), named).fit(x[two], labels[two])
    np.testing.assert_array_equal(fold.costs_, COSTS3[:2, :2])


def test_pipeline_grid_search_and_cross_validation():
    x, y, _ = three_class_problem(1200, seed=5)
    pipe = make_pipeline(StandardScaler(), CostSensitiveClassifier(LogisticRegression(), COSTS3))
    scores = cross_val_score(pipe, x, y, cv=3)  # the estimator's own score: minus the cost
    assert (scores <= 0).all() and scores.mean() > -1.0
    grid = GridSearchCV(
        CostSensitiveClassifier(LogisticRegression(), COSTS3),
        {"estimator__C": [0.01, 1.0], "calibration": [None, "sigmoid"]},
        cv=3,
    ).fit(x, y)
    assert grid.best_score_ == pytest.approx(max(grid.cv_results_["mean_test_score"]))
    assert grid.best_estimator_.score(x, y) == pytest.approx(
        -float(real_world_cost(y, grid.predict(x), COSTS3))
    )
    clone(grid.best_estimator_)  # get_params / set_params round trip
    restored = pickle.loads(pickle.dumps(grid.best_estimator_))
    np.testing.assert_array_equal(restored.predict(x), grid.predict(x))


def test_sample_weight_reaches_the_estimator_and_the_calibration():
    x, y, _ = three_class_problem(600, seed=6)
    w = np.random.default_rng(1).integers(0, 3, len(y))
    for calibration in (None, "temperature"):
        weighted = CostSensitiveClassifier(LogisticRegression(), COSTS3, calibration=calibration)
        weighted.fit(x, y, sample_weight=w)
        plain = CostSensitiveClassifier(LogisticRegression(), COSTS3, calibration=calibration)
        plain.fit(x, y)
        assert not np.allclose(weighted.predict_proba(x), plain.predict_proba(x))


@pytest.mark.parametrize(
    "kwargs, fit_kwargs, exc, match",
    [
        ({"calibration": "platt"}, {}, ValueError, r"calibration is 'platt'; expected None, 'sigmoid'"),
        ({"costs": np.ones((2, 2))}, {}, ValueError, r"costs has shape \(2, 2\) but y has 3 classes"),
        ({"costs": -COSTS3}, {}, ValueError, r"costs\[0, 1\] is -1.0"),
        ({"estimator": SVC()}, {}, TypeError, r"estimator is SVC, which has no predict_proba"),
        ({"estimator": make_pipeline(LogisticRegression())}, {"sample_weight": np.ones(90)}, TypeError, r"sample_weight was given but Pipeline.fit does not accept it"),
    ],
)  # fmt: skip
def test_errors(kwargs, fit_kwargs, exc, match):
    x, y, _ = three_class_problem(90, seed=7)
    params = {"estimator": LogisticRegression(), **kwargs}
    with pytest.raises(exc, match=match):
        CostSensitiveClassifier(**params).fit(x, y, **fit_kwargs)


def test_module_is_reachable_from_rwwce():
    assert rwwce.sklearn.CostSensitiveClassifier is CostSensitiveClassifier
    x, y, _ = three_class_problem(60, seed=8)
    clf = CostSensitiveClassifier(LogisticRegression()).fit(x, y)
    assert clf.n_features_in_ == 2 and list(clf.classes_) == [0, 1, 2]
    assert torch.is_tensor(torch.as_tensor(clf.predict_proba(x)))


def test_a_missing_scikit_learn_names_the_extra():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "try:\n    import rwwce.sklearn\nexcept ModuleNotFoundError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "rwwce.sklearn needs scikit-learn" in out and "rwwce[experiments]" in out
