"""Code written for dattri 0.2.0 runs unchanged on linop's ``dattri`` package, next to linop.

The calls below are dattri 0.2.0's ``dattri.func.hessian`` and ``dattri.func.projection`` API,
as a dattri user wrote them (vectors as rows, closures over the point ``x``); this repository's
``dattri`` package implements them on linop. Beside each is the linop call that does the same
(vectors as columns, operators instead of closures), and the script checks that both give the
same numbers: a logistic regression on scikit-learn's bundled digits, its Hessian ``H`` at the
trained parameters and ``H + λI``. Every call and its linop equivalent is listed in
``docs/migration.md``.

Run ``python examples/dattri_migration.py`` (about 8 s on 2 CPU cores); it exits with status 1
if a pair disagrees.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits

# dattri 0.2.0 imports, unchanged: served by this repository's dattri package, built on linop
from dattri.func.hessian import hvp_at_x, ihvp_at_x_arnoldi, ihvp_at_x_cg, ihvp_at_x_explicit
from dattri.func.projection import arnoldi_project, random_project
from linop import HessianOperator, IdentityOperator, ProjectionOperator

LAM = 1e-2  # the L2 weight, dattri's `regularization`
K = 2048  # the dimension of the random projections


def loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a logistic regression; ``theta``: 64×10 weights, then 10 biases."""
    return torch.nn.functional.cross_entropy(X @ theta[:640].view(64, 10) + theta[640:], y)


def with_dattri(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, G: torch.Tensor) -> dict:
    """Code written for dattri 0.2.0, unchanged: closures over a function of the parameters,
    vectors as rows (``G``: 8 gradients, ``(8, 650)``)."""

    def f(theta: torch.Tensor) -> torch.Tensor:
        return loss(theta, X, y)

    project_arnoldi = arnoldi_project(650, f, theta, proj_dim=50, max_iter=101, regularization=LAM)
    project_random = random_project(G, 8, K, 32, "cpu", proj_seed=0, use_half_precision=False)
    return {
        "hvp": hvp_at_x(f, (theta,))(G[0]),
        "explicit": ihvp_at_x_explicit(f, theta, regularization=LAM)(G),
        "cg": ihvp_at_x_cg(f, theta, max_iter=300, tol=1e-12, regularization=LAM)(G),
        "arnoldi": ihvp_at_x_arnoldi(f, theta, max_iter=101, top_k=50, regularization=LAM)(G),
        "arnoldi_project": project_arnoldi(G),
        "random_project": project_random(G.float()) / K**0.5,  # dattri's entries are N(0, 1)
    }


def with_linop(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, G: torch.Tensor) -> dict:
    """The same with linop: operators, vectors as columns (``V = Gᵀ``, ``(650, 8)``)."""
    H = HessianOperator(loss, (theta, X, y))  # the Hessian in argument 0, never formed
    A = H + LAM * IdentityOperator.like(H)
    V = G.T
    return {
        "hvp": H @ V[:, 0],
        "explicit": (A.inverse("explicit") @ V).T,
        "cg": (A.inverse("cg", maxiter=300, atol=1e-12, rtol=0.0) @ V).T,
        "arnoldi": (A.inverse("arnoldi", rank=50, maxiter=100) @ V).T,
        "arnoldi_project": ProjectionOperator.arnoldi(A, 50, maxiter=100).project(G),
        "random_project": ProjectionOperator.random(650, K, seed=0).project(G.float()),
    }


#: What is compared: the dattri call, its linop equivalent, and the tolerance of the check.
CALLS = {
    "hvp": ("hvp_at_x(f, (θ,))(v)", "H @ v", 1e-12),
    "explicit": (
        "ihvp_at_x_explicit(f, θ, regularization=λ)(V)", 'A.inverse("explicit") @ Vᵀ', 1e-10
    ),
    "cg": (
        "ihvp_at_x_cg(f, θ, max_iter=300, tol=1e-12, regularization=λ)(V)",
        'A.inverse("cg", maxiter=300, atol=1e-12, rtol=0) @ Vᵀ', 1e-8,
    ),
    "arnoldi": (
        "ihvp_at_x_arnoldi(f, θ, max_iter=101, top_k=50, regularization=λ)(V)",
        'A.inverse("arnoldi", rank=50, maxiter=100) @ Vᵀ   (dattri: max_iter − 1 steps)', 1e-8,
    ),
    "arnoldi_project": (
        "arnoldi_project(650, f, θ, proj_dim=50, max_iter=101, regularization=λ)(V)",
        "ProjectionOperator.arnoldi(A, 50, maxiter=100).project(V)", 1e-8,
    ),
    "random_project": (
        f"random_project(V, 8, {K}, 32, 'cpu', use_half_precision=False)(V) / √{K}",
        f"ProjectionOperator.random(650, {K}, seed=0).project(V)", 0.15,
    ),
}  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius distance ‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


def main() -> int:
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    images, labels = load_digits(return_X_y=True)
    X, y = torch.tensor(images[:500] / 16.0), torch.tensor(labels[:500])  # float64
    theta = torch.zeros(650, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")
    opt.step(lambda: (opt.zero_grad(), (v := loss(theta, X, y)), v.backward(), v)[-1])
    theta = theta.detach()
    # the loss gradients of 8 other images, as rows (8, 650)
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    G = grads(theta, torch.tensor(images[-8:, None] / 16.0), torch.tensor(labels[-8:, None]))

    old, new = with_dattri(theta, X, y, G), with_linop(theta, X, y, G)
    print(
        "dattri 0.2.0 calls, run unchanged on this repository's dattri package (built on linop), "
        "next to the linop\ncalls that do the same. Logistic regression on scikit-learn's digits "
        f"(650 parameters, 500 images, λ = {LAM:g});\nf(θ) is the training loss, H its Hessian, "
        "A = H + λI, V the loss gradients of 8 other images (dattri: rows\n(8, 650); linop: "
        "columns (650, 8)). difference: ‖dattri − linop‖ / ‖linop‖ (projections: of the inner "
        "products\nof the projected vectors, as their columns may differ in order and sign).\n"
    )
    bad = []
    for key, (dattri_call, linop_call, tol) in CALLS.items():
        a, b = old[key], new[key]
        if key.endswith("_project"):  # columns may differ in order and sign: inner products
            a, b = a @ a.T, b @ b.T
        diff = rel(a, b)
        bad += [] if diff <= tol else [key]
        print(f"  dattri  {dattri_call}\n  linop   {linop_call}")
        verdict = "agree" if diff <= tol else "DISAGREE"
        print(f"          difference {diff:.1e} (at most {tol:g}): {verdict}")
    exact = (G @ G.T).float()
    errors = [rel(p @ p.T, exact) for p in (old["random_project"], new["random_project"])]
    print(
        "\nThe two random projections use different random matrices by design (dattri's N(0, 1) "
        "entries, reproduced\non the CPU; linop's seeded ±1/√k, the same on every device): they "
        "agree in what a projection promises,\ninner products kept: "
        f"‖(PV)(PV)ᵀ − VVᵀ‖ / ‖VVᵀ‖ = {errors[0]:.1%} (dattri), {errors[1]:.1%} (linop) at k = {K}."
    )
    if bad:
        print(f"\nDISAGREE: {', '.join(bad)}")
        return 1
    print(f"\nAll {len(CALLS)} pairs agree: code written for dattri 0.2.0 runs unchanged on linop.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
