"""``scratchpilot.sklearn.NeuralNetClassifier``: scikit-learn's own estimator checks, a Pipeline and a
GridSearchCV on real MNIST digits, string labels, repeatability, bad input."""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from scratchpilot.data import load_mnist  # noqa: E402
from scratchpilot.sklearn import NeuralNetClassifier  # noqa: E402


@parametrize_with_checks([NeuralNetClassifier(hidden_layer_sizes=(32,), epochs=40, random_state=0)])
def test_scikit_learns_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits(shared_data):
    (X_train, y_train), (X_test, y_test) = load_mnist("digits", download=False, progress=False)
    return X_train[:5000].reshape(-1, 784), y_train[:5000], X_test[:2000].reshape(-1, 784), y_test[:2000]


def scaled(**params):
    """Pixels 0..255 → 0..1, then the classifier."""
    return make_pipeline(FunctionTransformer(lambda X: X / 255.0), NeuralNetClassifier(**params))


def test_a_pipeline_reads_mnist(digits):
    X, y, X_test, y_test = digits
    model = scaled(hidden_layer_sizes=(128,), epochs=8, batch_size=64, random_state=0).fit(X, y)
    accuracy = model.score(X_test, y_test)
    assert accuracy >= 0.90, accuracy
    assert model.predict_proba(X_test[:5]).sum(axis=1) == pytest.approx(np.ones(5))


def test_grid_search_picks_and_refits(digits):
    X, y, _, _ = digits
    search = GridSearchCV(scaled(epochs=3, batch_size=64, random_state=0),
                          {"neuralnetclassifier__hidden_layer_sizes": [(16,), (64,)],
                           "neuralnetclassifier__learning_rate": [1e-4, 3e-3]}, cv=3, n_jobs=1)
    search.fit(X[:1500], y[:1500])
    assert search.best_params_ == {"neuralnetclassifier__hidden_layer_sizes": (64,),
                                   "neuralnetclassifier__learning_rate": 3e-3}
    assert search.best_estimator_[-1].model_.layers[0].params["W"].shape == (784, 64)
    assert search.score(X[1500:2500], y[1500:2500]) > 0.8


def test_string_labels_params_and_repeatability():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 1, (60, 3)), rng.normal(2, 1, (60, 3))])
    y = np.array(["left"] * 60 + ["right"] * 60)
    a = NeuralNetClassifier(hidden_layer_sizes=(8,), epochs=60, random_state=3).fit(X, y)
    b = clone(a).fit(X, y)
    assert list(a.classes_) == ["left", "right"] and set(a.predict(X)) <= {"left", "right"}
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))  # the same seed, the same model
    assert a.score(X, y) > 0.95
    assert a.get_params()["hidden_layer_sizes"] == (8,)
    assert a.set_params(epochs=5).epochs == 5
    import pickle  # what joblib and scikit-learn's model persistence do; the network travels as .npz bytes

    copy = pickle.loads(pickle.dumps(a))
    assert np.array_equal(copy.predict_proba(X), b.predict_proba(X))


def test_bad_input_gets_scikit_learns_errors():
    model = NeuralNetClassifier(epochs=2, random_state=0)
    X, y = np.random.default_rng(1).normal(size=(20, 4)), np.arange(20) % 2
    with pytest.raises(NotFittedError):
        model.predict(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, y)
    model.fit(X, y)
    with pytest.raises(ValueError, match="4 features"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="Unknown label type"):
        clone(model).fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        NeuralNetClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="optimizer"):
        NeuralNetClassifier(optimizer="lbfgs").fit(X, y)
