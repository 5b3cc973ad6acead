"""LiSSA: the stochastic Neumann series for ``(H + λI)⁻¹``.

With ``A = H + λI`` and a scale ``s``, the recursion ``h ← b + h − (A_t h) / s`` (``A_t`` the
operator at a random minibatch, plus exactly ``λI``) converges to ``s A⁻¹ b`` when
``s > λ_max(A)``; the answer is ``h / s``, averaged over ``repeats`` independent runs. On an
operator without data the series is deterministic. Every right-hand side advances together, one
batched product per step.

Divergence is detected on the increments ``‖h_{t+1} − h_t‖`` (the partial sums legitimately
grow): a non-finite increment, or one ``divergence_factor`` times larger than the first, raises
[`DivergenceError`][linop.errors.DivergenceError] advising a larger ``scale``. On an operator
without data the increments of a convergent series never grow (each is the last times ``I − A/s``,
of norm at most 1), so one twice the smallest so far, above rounding, also raises: ``A`` is not
positive definite, or ``s`` is too small. With minibatches the increments settle at the sampling
noise, which may exceed the first, so only the growth factor applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from linop._checks import finite_number, positive_int
from linop._checks import seed as check_seed
from linop._warn import warn
from linop.algebra import split_shift
from linop.curvature.dataset import DatasetMean
from linop.errors import ConvergenceWarning, DivergenceError
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.lanczos import eigh
from linop.operator import LinearOperator

__all__ = ["LissaOptions", "LissaStrategy"]


@dataclass(frozen=True)
class LissaOptions(SolverOptions):
    """Options of ``method="lissa"``.

    Attributes:
        depth: recursion steps.
        repeats: independent runs averaged.
        batch_size: examples per minibatch (None: the data's own batches).
        scale: ``s``; must exceed the largest eigenvalue of ``H + λI`` (of every minibatch's).
            None (the default) estimates it: ``1.5 (θ + λ)`` with ``θ`` the largest top
            eigenvalue found by 10 Lanczos steps on each of 3 random minibatches (on the
            operator itself when it has no data); reported in ``info.extra["scale"]``, its
            products counted in ``info.hvps``.
        seed: seed of the minibatch draws.
        check_every: steps between divergence checks (default 1 on CPU, 10 on GPUs).
        divergence_factor: growth of the increments (over the first) that counts as divergence.
        progress: show a progress bar.
    """

    method = "lissa"
    depth: int = 100
    repeats: int = 1
    batch_size: int | None = None
    scale: float | None = None
    seed: int = 0
    check_every: int | None = None
    divergence_factor: float = 1e4
    progress: bool = False

    def validate(self) -> None:
        positive_int("depth", self.depth, allow_none=False)
        positive_int("repeats", self.repeats, allow_none=False)
        positive_int("batch_size", self.batch_size)
        positive_int("check_every", self.check_every)
        check_seed(self.seed)
        if self.scale is not None and finite_number("scale", self.scale) <= 0:
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        if finite_number("divergence_factor", self.divergence_factor) <= 1:
            raise ValueError(f"divergence_factor must exceed 1, got {self.divergence_factor!r}")


@register
class LissaStrategy(Strategy):
    """The stochastic Neumann series; options: [`LissaOptions`][linop.LissaOptions]."""

    name = "lissa"
    Options = LissaOptions
    options: LissaOptions

    def _setup(self) -> int:
        self.base, self.shift = split_shift(self.operator)
        if self.options.scale is not None:
            self.scale = float(self.options.scale)
            return 0
        self.scale, products = self._estimate_scale()
        return products

    def _estimate_scale(self) -> tuple[float, int]:
        """1.5 × (the largest top eigenvalue over a few minibatches + λ), from short Lanczos
        runs (their Ritz values approach the top eigenvalue from below; the margin covers that
        and the minibatches not sampled)."""
        generator = torch.Generator().manual_seed(self.options.seed + 1)  # not LiSSA's draws
        draws = 3 if isinstance(self.base, DatasetMean) else 1
        top, products = 0.0, 0
        for _ in range(draws):
            op = self._draw(generator)
            steps = min(10, op.shape[0])
            low, more = eigh(op, 1, maxiter=steps, which="LA")
            top, products = max(top, float(low.values[0])), products + more
        if top + self.shift <= 0:
            raise ValueError(
                f"LiSSA needs a positive definite H + λI, but its largest eigenvalue estimate is "
                f"{top + self.shift:.3g}; add a shift λ > 0 (and give scale= explicitly)"
            )
        return 1.5 * (top + self.shift), products

    def _draw(self, generator: torch.Generator) -> LinearOperator:
        """The operator at a random minibatch (a dataset mean's hook), or the operator itself."""
        if isinstance(self.base, DatasetMean):
            return self.base.minibatch(generator, self.options.batch_size)
        return self.base

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        o = self.options
        s, lam = self.scale, self.shift
        every = o.check_every or (1 if B.device.type == "cpu" else 10)
        generator = torch.Generator().manual_seed(o.seed)
        total = torch.zeros_like(B)
        k = B.shape[1]
        bar = tqdm(total=o.repeats * o.depth, desc="LiSSA", disable=not o.progress, leave=False)
        first = B.norm(dim=0)
        deterministic = not isinstance(self.base, DatasetMean)  # no minibatches to draw
        growth = torch.ones(k, dtype=B.dtype, device=B.device)  # ‖h_T‖ / ‖h_{T/2}‖, worst run
        for _ in range(o.repeats):
            h = B.clone()
            low = first.clone()  # the smallest increment so far, per column
            middle = h.norm(dim=0)
            for step in range(1, o.depth):
                if step == o.depth // 2:
                    middle = h.norm(dim=0)
                op = self._draw(generator)
                Ah = op._matmat(h) + lam * h if lam else op._matmat(h)
                increment = B - Ah / s
                h = h + increment
                if step % every == 0 or step == o.depth - 1:
                    last = increment.norm(dim=0)
                    self._check(last, first, (low, h.norm(dim=0)) if deterministic else None, step)
                    low = torch.minimum(low, last)
                bar.update(1)
            bar.update(1)
            total += h
            growth = torch.maximum(
                growth, h.norm(dim=0) / middle.clamp_min(torch.finfo(h.dtype).tiny)
            )
        bar.close()
        X = total / (o.repeats * s)
        hvps = (o.depth - 1) * o.repeats * k
        info = SolveInfo.unchecked(self.name, k, o.depth * o.repeats, StopReason.FIXED_DEPTH, hvps)
        info.extra["scale"] = s
        info.converged = self._growth_check(growth).cpu()
        return X, info

    def _growth_check(self, growth: torch.Tensor) -> torch.Tensor:
        """Whether each column settled: a convergent series stops changing, so its iterate at
        the end is about its iterate halfway (along an eigenvalue ``θ``, the ratio is
        ``1 + (1 − θ/s)^(T/2)``), while a direction it cannot converge along (``θ = 0``: a
        singular operator with ``λ = 0``) grows linearly, doubling it. A ratio above 1.25 (that
        direction less than 75 % converged) warns."""
        settled = growth <= 1.25
        if not bool(settled.all()) and self.options.depth >= 4:
            warn(
                f"LiSSA has not converged in {int((~settled).sum())} of {len(settled)} column(s): "
                f"the iterate grew by up to {float(growth.max()) - 1:.0%} over the second half of "
                f"the recursion, where a converged series stops changing. With λ = "
                f"{self.shift:g}, the operator may be singular (softmax Hessians are: adding the "
                f"same amount to every logit changes nothing), and the answer then grows with "
                f"depth: add a shift λ > 0. Otherwise raise depth, or lower scale (keeping it "
                f"above the largest eigenvalue)",
                ConvergenceWarning,
            )
            return settled
        return torch.ones_like(settled)

    def _check(
        self,
        inc: torch.Tensor,
        first: torch.Tensor,
        low_h: tuple[torch.Tensor, torch.Tensor] | None,
        step: int,
    ) -> None:
        factor = self.options.divergence_factor
        bad = ~torch.isfinite(inc) | (inc > factor * first.clamp_min(torch.finfo(inc.dtype).tiny))
        if bool(bad.any()):
            raise DivergenceError(
                f"LiSSA diverged at step {step}: the increment norm grew to "
                f"{float(inc.max()):.3g} from {float(first.max()):.3g}. The scale "
                f"{self.scale:g} must exceed the largest eigenvalue of H + λI "
                f"(estimate it with A.eigh(1)); increase scale"
            )
        if low_h is None:
            return
        low, hnorm = low_h
        eps = torch.finfo(inc.dtype).eps  # below the floor, growth is rounding noise (of h too)
        floor = torch.maximum(eps**0.5 * first, 100 * eps * hnorm)
        grew = (inc > 2 * low) & (inc > floor)
        if bool(grew.any()):
            raise DivergenceError(
                f"LiSSA diverged at step {step}: the increments grew from "
                f"{float(low[grew].min()):.3g} to {float(inc[grew].max()):.3g}, which a convergent "
                f"series never does. Either H + λI is not positive definite (add a shift λ > 0; "
                f"check A.eigh(1, which='LA')) or the scale {self.scale:g} is below its "
                f"largest eigenvalue; increase scale"
            )
