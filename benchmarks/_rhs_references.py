"""What both sides of :mod:`benchmarks.many_rhs` share (the tolerance ladder, the search for the
loosest setting that reaches a target, the error) and the reference libraries' side, which runs
in subprocesses: dattri 0.2.0 (``PYTHONPATH`` puts ``.ref/dattri020`` in front of our own
``dattri``), pyDVL 0.10.0 (from its private folder) and curvlinops.

How each reference's operator products are counted (columns counted, set-up included):

- dattri 0.2.0 ``ihvp_at_x_cg``: analytically, ``k (max_iter + 1)`` for ``k`` right-hand sides:
  it runs exactly ``max_iter`` iterations on every column (no stopping test) after one product
  for the initial residual, all inside ``vmap``, where a counter cannot see them.
- pyDVL: a counter wrapped around its ``HessianOperator.apply``, through which both its CG
  solvers and its Nyström preconditioner's sketch go.
- curvlinops: a counter inside the ``H + λI`` operator handed to ``CGInverseLinearOperator``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: The accuracy targets: max over columns of ‖x − x*‖ / ‖x*‖.
TARGETS = (1e-2, 1e-4)
#: Relative residual tolerances tried, loose to tight (half decades, 1e-1 to 1e-10).
LADDER = [10 ** (-k / 2) for k in range(2, 21)]
#: dattri's CG takes no tolerance (it ignores ``tol``): its knob is ``max_iter``.
DATTRI_ITERS = [5, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480]
#: Rank of every Nyström / Arnoldi sketch (ours and pyDVL's).
RANK = 100


def max_rel_error(X: torch.Tensor, ref: torch.Tensor) -> float:
    """``max_j ‖x_j − x*_j‖ / ‖x*_j‖`` (inf when ``X`` is not finite)."""
    err = float(((X - ref).norm(dim=0) / ref.norm(dim=0)).max())
    return err if math.isfinite(err) else math.inf


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def search(
    run: Callable[[Any], tuple[torch.Tensor, float, int]],
    knobs: list[Any],
    ref: torch.Tensor,
    tightest: float = min(TARGETS),
) -> list[dict[str, Any]]:
    """Run ``run(knob) -> (X, seconds, products)`` from the loosest knob on, until the error
    reaches ``tightest`` (or the knobs run out); one trial record per knob tried."""
    trials = []
    for knob in knobs:
        with warnings.catch_warnings():  # loose settings warn of non-convergence: expected
            warnings.simplefilter("ignore")
            X, seconds, products = run(knob)
        err = max_rel_error(X, ref)
        trials.append(
            {"knob": knob, "seconds": seconds, "products": int(products), "max_rel_error": err}
        )
        print(f"      {knob:10.3g}: {seconds:8.2f} s {products:7d} products, error {err:.2e}")
        if err <= tightest:
            break
    return trials


def _flat_function(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> Any:
    """``theta -> mean cross-entropy`` over a flat parameter vector (named_parameters order)."""
    from torch.func import functional_call

    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        chunks = theta.split(sizes)
        parts = {k: t.reshape(s) for k, t, s in zip(names, chunks, shapes, strict=True)}
        return torch.nn.functional.cross_entropy(functional_call(model, parts, (X,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta


def _dattri(problem: dict[str, Any], lam: float, G: torch.Tensor, ref: torch.Tensor) -> list:
    from benchmarks._mlp_problems import build_model
    from dattri.func.hessian import ihvp_at_x_cg

    model = build_model(problem["sizes"], problem["state"])
    f, theta = _flat_function(model, problem["X"], problem["y"])
    k = G.shape[1]

    def run(max_iter: int) -> tuple[torch.Tensor, float, int]:
        ihvp = ihvp_at_x_cg(f, theta, max_iter=max_iter, regularization=lam)
        X, seconds = timed(lambda: ihvp(G.T).T)
        return X, seconds, k * (max_iter + 1)

    return [("dattri 0.2.0 CG (ihvp_at_x_cg)", "max_iter", search(run, DATTRI_ITERS, ref))]


def _pydvl(problem: dict[str, Any], lam: float, G: torch.Tensor, ref: torch.Tensor) -> list:
    from pydvl.influence.torch.operator import CgOperator
    from pydvl.influence.torch.operator import HessianOperator as DvlHessian
    from pydvl.influence.torch.preconditioner import NystroemPreconditioner
    from torch.utils.data import DataLoader, TensorDataset

    from benchmarks._mlp_problems import build_model

    model = build_model(problem["sizes"], problem["state"])
    X, y = problem["X"], problem["y"]
    loader = DataLoader(TensorDataset(X, y), batch_size=len(X))
    loss = torch.nn.functional.cross_entropy
    rows = []
    for name, block, nystroem in [
        ("pyDVL 0.10 block CG", True, False),
        (f"pyDVL 0.10 CG + Nyström (rank {RANK})", False, True),
        (f"pyDVL 0.10 block CG + Nyström (rank {RANK})", True, True),
    ]:

        def run(rtol: float, block: bool = block, nystroem: bool = nystroem) -> tuple:
            op = DvlHessian(model, loss, loader)
            count = [0]
            apply = op.apply

            def counted(v: torch.Tensor) -> torch.Tensor:
                count[0] += v.shape[0] if v.ndim == 2 else 1
                return apply(v)

            op.apply = counted  # type: ignore[method-assign]

            def solve() -> torch.Tensor:
                pre = NystroemPreconditioner(RANK).fit(op, lam) if nystroem else None
                cg = CgOperator(op, lam, rtol=rtol, preconditioner=pre, use_block_cg=block)
                return cg.apply(G.T).T

            torch.manual_seed(0)  # pyDVL's sketch draws from the global generator
            X, seconds = timed(solve)
            return X, seconds, count[0]

        # pyDVL stops at ‖r‖ < rtol² ‖b‖: its rtol is the square root of the ladder's
        rows.append((name, "rtol", search(run, [math.sqrt(t) for t in LADDER], ref)))
    return rows


def _curvlinops(problem: dict[str, Any], lam: float, G: torch.Tensor, ref: torch.Tensor) -> list:
    from curvlinops import CGInverseLinearOperator, HessianLinearOperator
    from curvlinops._torch_base import PyTorchLinearOperator

    from benchmarks._mlp_problems import build_model

    model = build_model(problem["sizes"], problem["state"])
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(problem["X"], problem["y"])]
    H = HessianLinearOperator(
        model, torch.nn.CrossEntropyLoss(), params, data, check_deterministic=False
    )

    class Shifted(PyTorchLinearOperator):
        """``H + λI``, counting the columns it is applied to."""

        SELF_ADJOINT = True

        def __init__(self) -> None:
            super().__init__(H._in_shape, H._out_shape)
            self.count = 0

        @property
        def dtype(self) -> torch.dtype:
            return H.dtype

        @property
        def device(self) -> torch.device:
            return H.device

        def _matmat(self, X: list[torch.Tensor]) -> list[torch.Tensor]:
            self.count += X[0].shape[-1]
            return [h + lam * x for h, x in zip(H._matmat(X), X, strict=True)]

    def run(tolerance: float) -> tuple[torch.Tensor, float, int]:
        A = Shifted()
        # eps: its default 1e-10 treats pᵀAp below it as zero, which stalls CG on these small
        # Hessian eigenvalues; 1e-30 leaves the arithmetic alone (it only guards 0 / 0)
        inv = CGInverseLinearOperator(A, tolerance=tolerance, eps=1e-30, max_iter=10_000)
        X, seconds = timed(lambda: inv @ G)
        return X, seconds, A.count

    return [("curvlinops 3 CG inverse", "tolerance", search(run, LADDER, ref))]


LIBRARIES = {"dattri": _dattri, "pydvl": _pydvl, "curvlinops": _curvlinops}


def reference_main(library: str, path: str) -> dict[str, Any]:
    """Run ``library``'s methods on the problem saved at ``path`` (with its reference
    solutions and configuration); return the rows as JSON-ready data."""
    from benchmarks._mlp_problems import load

    problem = load(path)
    torch.set_num_threads(problem["threads"])
    out = []
    for lam in problem["lams"]:
        ref = problem["reference"][lam]
        print(f"    {library}, lambda = {lam:g}", flush=True)
        for method, knob, trials in LIBRARIES[library](problem, lam, problem["rhs"], ref):
            out.append({"lam": lam, "method": method, "knob_name": knob, "trials": trials})
    return {"rows": out}
