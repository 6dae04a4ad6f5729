"""scikit-learn estimators that decide by cost (named like ``xgboost.sklearn``).

Imported on first use (``rwwce.sklearn`` or ``from rwwce.sklearn import ...``): ``import rwwce``
does not import scikit-learn. Needs the ``experiments`` extra.

scikit-learn tunes decision thresholds for two classes (``TunedThresholdClassifierCV``);
:class:`CostSensitiveClassifier` takes any K x K cost matrix and decides each sample by
``argmin_j sum_i p_i C[i, j]`` (:func:`rwwce.metrics.bayes_decision`), optionally after
calibrating the probabilities.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from rwwce import _costmath
from rwwce._optional import require
from rwwce.costs import CostMatrix, as_cost_matrix
from rwwce.metrics import bayes_decision

require("sklearn", "rwwce.sklearn", "scikit-learn")

from sklearn.base import (  # noqa: E402
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    clone,
)
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.model_selection import check_cv, cross_val_predict  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets  # noqa: E402
from sklearn.utils.validation import check_is_fitted, column_or_1d, has_fit_parameter  # noqa: E402

__all__ = ["CostSensitiveClassifier"]

CALIBRATIONS = (None, "sigmoid", "isotonic", "temperature")
_TINY = 1e-300  # floor for log(predict_proba): a hard 0 becomes a very negative, finite logit


class CostSensitiveClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Any probabilistic classifier, deciding by cost: ``predict`` is the Bayes decision.

    ``predict(X) = classes_[argmin_j sum_i p_i(X) C[i, j]]`` with ``p = predict_proba(X)``: the
    class with the lowest expected cost under the cost matrix ``C`` (rows: truth, columns:
    decision; rows and columns in the order of ``classes_``, the sorted labels). Without costs
    it is the arg-max. ``score`` is minus the (weighted) mean Real World Cost, so
    ``GridSearchCV`` and ``cross_val_score`` maximise it without a ``scoring=``.

    Args:
        estimator: a scikit-learn classifier with ``predict_proba`` (cloned, never modified).
        costs: a (K, K) array-like or :class:`rwwce.CostMatrix`; ``None`` (default) is the 0-1
            cost. A ``CostMatrix`` given class names that include every label (``str(label)``)
            is indexed by name, so a fold missing a class still gets the right rows for its
            decisions and is scored with the whole matrix (the held-out part may hold the
            missing class); otherwise (an array, or a ``CostMatrix`` without names) K must
            equal the number of classes in ``y``, rows in the order of the sorted labels.
        calibration: ``None`` (use ``estimator.predict_proba`` as it is), ``"sigmoid"`` or
            ``"isotonic"`` (scikit-learn's ``CalibratedClassifierCV(estimator, method, cv=cv)``),
            or ``"temperature"`` (:class:`rwwce.calibration.TemperatureScaling` of
            ``log predict_proba``, fitted on out-of-fold predictions; the estimator itself is
            refitted on all data).
        cv: the cross-validation splitting of the calibration (an int, a splitter or an
            iterable, as scikit-learn's ``cv``); default 5-fold stratified. Ignored without
            calibration.

    Attributes:
        classes_: the sorted class labels.
        costs_: (K, K) float64 NumPy cost matrix used for the decisions.
        estimator_: the fitted estimator (a ``CalibratedClassifierCV`` for sigmoid / isotonic).
        calibrator_: the fitted ``TemperatureScaling`` (``"temperature"`` only), else ``None``.

    Example::

        >>> from sklearn.datasets import load_breast_cancer
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> y = 1 - y                                  # 1 = malignant: a miss costs 20
        >>> base = make_pipeline(StandardScaler(), LogisticRegression())
        >>> clf = CostSensitiveClassifier(base, costs=[[0, 1], [20, 0]]).fit(X, y)
        >>> clf.predict(X[:3]).tolist(), round(clf.score(X, y), 3)
        ([1, 1, 1], -0.12)
    """

    def __init__(
        self,
        estimator: Any,
        costs: Any = None,
        *,
        calibration: Literal["sigmoid", "isotonic", "temperature"] | None = None,
        cv: Any = None,
    ) -> None:
        self.estimator = estimator
        self.costs = costs
        self.calibration = calibration
        self.cv = cv

    # ---------------------------------------------------------------------------- fitting
    def _resolve_costs(self) -> np.ndarray:
        k = len(self.classes_)
        if self.costs is None:
            return 1.0 - np.eye(k)
        cm = as_cost_matrix(self.costs)
        names = [str(c) for c in self.classes_]
        if self._by_name(names):
            rows = [cm.classes.index(n) for n in names]
            return cm.matrix.numpy()[np.ix_(rows, rows)]
        if cm.num_classes != k:
            raise ValueError(
                f"costs has shape ({cm.num_classes}, {cm.num_classes}) but y has {k} classes "
                f"({', '.join(names)}); expected a ({k}, {k}) matrix in the order of the sorted "
                "labels, or a CostMatrix naming every label"
            )
        return cm.matrix.numpy()

    def _by_name(self, names: list[str]) -> bool:
        """Whether the costs are a CostMatrix given class names that include ``names``."""
        cm = self.costs
        return isinstance(cm, CostMatrix) and cm.named and set(names) <= set(cm.classes)

    def fit(self, X: Any, y: Any, sample_weight: Any = None, **fit_params: Any) -> Any:
        """Fit the estimator (and the calibration) on ``X``, ``y``.

        Args:
            X: training data, as the estimator accepts it.
            y: (n_samples,) class labels.
            sample_weight: optional (n_samples,) weights, passed to the estimator's ``fit`` (and
                to the calibration).
            **fit_params: passed to the estimator's ``fit``.

        Returns:
            ``self``.
        """
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"calibration is {self.calibration!r}; expected None, 'sigmoid', 'isotonic' or "
                "'temperature'"
            )
        if not hasattr(self.estimator, "predict_proba"):
            raise TypeError(
                f"estimator is {type(self.estimator).__name__}, which has no predict_proba; "
                "expected a probabilistic classifier (for an SVC: probability=True)"
            )
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        y_arr = column_or_1d(y, warn=True)
        check_classification_targets(y_arr)
        self.classes_ = np.unique(y_arr)
        self.costs_ = self._resolve_costs()
        params = dict(fit_params)
        if sample_weight is not None:
            if not has_fit_parameter(self.estimator, "sample_weight"):
                raise TypeError(
                    f"sample_weight was given but {type(self.estimator).__name__}.fit does not "
                    "accept it"
                )
            params["sample_weight"] = sample_weight
        self.calibrator_ = None
        if self.calibration in ("sigmoid", "isotonic"):
            calibrated = CalibratedClassifierCV(
                clone(self.estimator), method=self.calibration, cv=self.cv
            )
            self.estimator_ = calibrated.fit(X, y_arr, **params)
        else:
            if self.calibration == "temperature":
                self.calibrator_ = self._fit_temperature(X, y_arr, sample_weight, params)
            self.estimator_ = clone(self.estimator).fit(X, y_arr, **params)
        if not np.array_equal(np.asarray(self.estimator_.classes_), self.classes_):
            raise ValueError(
                f"the fitted estimator's classes_ {self.estimator_.classes_!r} differ from the "
                f"labels {self.classes_!r}"
            )
        return self

    def _fit_temperature(self, X: Any, y: np.ndarray, sample_weight: Any, params: dict) -> Any:
        from rwwce.calibration import TemperatureScaling

        cv = check_cv(5 if self.cv is None else self.cv, y, classifier=True)
        oof = cross_val_predict(
            clone(self.estimator), X, y, cv=cv, method="predict_proba", params=params
        )
        target = np.searchsorted(self.classes_, y)
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        return TemperatureScaling().fit(self._logits(oof), target, sample_weight=weight)

    @staticmethod
    def _logits(probs: np.ndarray) -> torch.Tensor:
        p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        return p.clamp(min=_TINY).log()

    # ---------------------------------------------------------------------------- predicting
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (calibrated when ``calibration`` is set), columns as ``classes_``."""
        check_is_fitted(self)
        p = self.estimator_.predict_proba(X)
        if self.calibrator_ is None:
            return p
        return self.calibrator_.transform(self._logits(p)).softmax(dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The cost-optimal label for each row of ``X``."""
        p = torch.as_tensor(np.asarray(self.predict_proba(X), dtype=np.float64))
        p = p / p.sum(dim=1, keepdim=True)  # estimators' rows sum to 1 only within rounding
        return self.classes_[bayes_decision(p, self.costs_).numpy()]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Minus the (weighted) mean Real World Cost of ``predict(X)`` against ``y``; with a named
        ``CostMatrix`` under the whole matrix, so that ``y`` may hold a class the fit never saw."""
        predicted = self.predict(X)
        if self._by_name([str(c) for c in self.classes_]):
            return -_costmath.label_cost(
                [str(v) for v in np.asarray(y).reshape(-1)],
                [str(v) for v in predicted],
                costs=self.costs,
                labels=list(self.costs.classes),
                sample_weight=sample_weight,
            )
        return -_costmath.label_cost(
            y, predicted, costs=self.costs_, labels=self.classes_, sample_weight=sample_weight
        )

    # ---------------------------------------------------------------------------- delegation
    @property
    def n_features_in_(self) -> int:
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self) -> np.ndarray:
        return self.estimator_.feature_names_in_

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import get_tags

        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags.sparse = inner.input_tags.sparse
        tags.input_tags.allow_nan = inner.input_tags.allow_nan
        return tags
