"""The one-batch curvature operator base (linop.curvature.base), through a subclass written as a
user would: a Gauss-Newton operator that implements only ``loss`` and ``_matmat``. It gets the
snapshot of its point, ``at``, ``gradient``, the dataset mean and pickling from the base."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.func import grad

from linop import CurvatureOperator, DatasetMean, DeviceMismatchError, DTypeMismatchError
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles, gen

D64 = torch.float64


def network(p, X):
    """A small network whose Jacobian is not constant."""
    return torch.tanh(X @ p["W"]) @ p["v"]


class GaussNewton(CurvatureOperator):
    """``Jᵀ J / n`` for the residuals ``network(θ, X) − Y`` of one batch ``(X, Y)``: the
    Gauss-Newton matrix of ``½ mean ‖network(θ, X) − Y‖²``. The Jacobian is kept per batch."""

    _transient = ("_jacobian",)

    def __init__(self, point, batch):
        super().__init__(point, batch, Tags(psd=True))

    def residuals(self, theta):
        X, Y = self.batch
        return network(self.spec.unflatten(theta), X) - Y

    def loss(self, theta):
        return 0.5 * self.residuals(theta).pow(2).sum(1).mean()

    def _matmat(self, V):
        J = self.__dict__.get("_jacobian")
        if J is None:
            J = self._jacobian = torch.func.jacrev(self.residuals)(self.params).reshape(
                -1, self.shape[0]
            )
        return J.T @ (J @ V) / self.batch[0].shape[0]


def _point(seed=0):
    g = gen(seed)
    return {
        "W": torch.randn(3, 4, dtype=D64, generator=g),
        "v": torch.randn(4, 2, dtype=D64, generator=g),
    }


def _data(n=12, seed=1):
    g = gen(seed)
    return torch.randn(n, 3, dtype=D64, generator=g), torch.randn(n, 2, dtype=D64, generator=g)


def _dense(point, X, Y):
    """``Jᵀ J / n`` by torch.autograd.functional.jacobian, another autodiff path."""
    flat = torch.cat([t.reshape(-1) for t in point.values()])
    shapes = [t.shape for t in point.values()]

    def residuals(theta):
        W, v = (
            p.reshape(s)
            for p, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes, strict=True)
        )
        return network({"W": W, "v": v}, X) - Y

    J = torch.autograd.functional.jacobian(residuals, flat).reshape(-1, flat.numel())
    return J.T @ J / X.shape[0], flat


def test_a_subclass_meets_the_operator_contract():
    point, (X, Y) = _point(), _data()
    G = GaussNewton(point, (X, Y))
    dense, flat = _dense(point, X, Y)
    assert G.shape == (20, 20) and G.tags.psd
    assert_close(G.params, flat)
    check_operator(G, dense)


def test_at_keeps_the_point_and_drops_the_batchs_state():
    point, (X, Y) = _point(), _data()
    G = GaussNewton(point, (X[:6], Y[:6]))
    G @ torch.ones(20, dtype=D64)
    assert "_jacobian" in G.__dict__
    other = G.at((X[6:], Y[6:]))
    assert "_jacobian" not in other.__dict__ and other.cache is not G.cache
    assert other.params is G.params and isinstance(other.batch, tuple)
    check_operator(other, _dense(point, X[6:], Y[6:])[0])
    assert_close(G.to_dense(), _dense(point, X[:6], Y[:6])[0])  # the original is unchanged


def test_the_point_is_a_snapshot_and_the_gradient_is_taken_there():
    point, (X, Y) = _point(), _data()
    dense, flat = _dense(point, X, Y)
    G = GaussNewton(point, (X, Y))
    for t in point.values():
        t.add_(1)
    assert_close(G.to_dense(), dense)
    expected = grad(lambda t: GaussNewton(_point(), (X, Y)).loss(t))(flat)
    assert_close(G.gradient(), expected)


def test_the_dataset_mean_of_a_subclass():
    point, (X, Y) = _point(), _data(15)
    cuts = [(0, 4), (4, 13), (13, 15)]
    D = DatasetMean(GaussNewton(point, (X, Y)), [(X[a:b], Y[a:b]) for a, b in cuts])
    full, flat = _dense(point, X, Y)  # Jᵀ J / n over all examples = the weighted mean
    check_operator(D, full)
    assert_close(D.gradient(), grad(lambda t: GaussNewton(point, (X, Y)).loss(t))(flat))


def test_pickling_drops_the_transient_state():
    point, (X, Y) = _point(), _data()
    G = GaussNewton(point, (X, Y))
    V = torch.randn(20, 3, dtype=D64, generator=gen(4))
    copy = assert_pickles(G, V)
    assert "_jacobian" not in pickle.loads(pickle.dumps(G)).__dict__
    assert "_jacobian" in copy.__dict__  # rebuilt by its first product


def test_bad_points_and_batches():
    X, Y = _data()
    with pytest.raises(DTypeMismatchError, match="floating-point"):
        GaussNewton(
            {"W": torch.ones(3, 4, dtype=torch.long), "v": torch.ones(4, 2, dtype=torch.long)},
            (X, Y),
        )
    with pytest.raises(DeviceMismatchError, match="move the data"):
        GaussNewton(_point(), (X.to("meta"), Y))

    class NoLoss(CurvatureOperator):
        def _matmat(self, V):
            return V

    with pytest.raises(NotImplementedError, match="loss"):
        NoLoss(torch.zeros(2, dtype=D64), (X,), Tags()).gradient()
