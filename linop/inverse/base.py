"""What every inverse method shares: typed options, the strategy protocol, why a column stopped,
and the report of a solve.

A method is a `Strategy` subclass with a frozen dataclass of options (a
[`SolverOptions`][linop.SolverOptions]): the options are parsed and validated when the inverse is
built, so an unknown or invalid option fails at ``A.inverse(...)`` with the list of valid ones. The
strategy's `setup` runs once, lazily; `solve` runs per right-hand side and
returns a [`SolveInfo`][linop.SolveInfo] whose ``reasons`` are [`StopReason`][linop.StopReason]
members.

Example:
    >>> from linop.inverse import CGOptions, StopReason
    >>> CGOptions(rtol=1e-8).rtol
    1e-08
    >>> StopReason.CONVERGED == "converged"          # a str enum: it prints as its value
    True
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from linop.operator import LinearOperator

__all__ = ["METHODS", "SolveInfo", "SolverOptions", "StopReason", "Strategy", "register"]


class StopReason(str, enum.Enum):
    """Why a column of a solve stopped. A ``str`` enum: members compare equal to their value
    (``info.reasons[0] == "converged"``), and code compares members."""

    #: the residual met the tolerance (iterative methods) — the only reason that means converged
    CONVERGED = "converged"
    #: out of iterations before the tolerance
    MAXITER = "maxiter reached"
    #: ``pᵀAp ≤ 0`` to working precision: the operator is not positive definite along ``p``
    NEGATIVE_CURVATURE = "non-positive curvature"
    #: ``pᵀAp = 0`` to working precision (CG with ``indefinite=True``): singular along ``p``
    ZERO_CURVATURE = "zero curvature"
    #: the recursive residual met the tolerance, the true one did not (rounding)
    ATTAINABLE_ACCURACY = "attainable accuracy reached"
    #: a direct solve by a factorisation (explicit)
    DIRECT = "direct solve"
    #: the low-rank inverse from eigenpairs (arnoldi); no residual computed
    LOW_RANK = "low-rank inverse"
    #: a fixed number of stochastic steps (lissa); no residual computed
    FIXED_DEPTH = "fixed depth reached"
    #: the closed-form inverse from a known eigendecomposition (eigen); exact up to rounding,
    #: no residual computed
    EIGEN = "closed-form inverse from the eigendecomposition"

    def __str__(self) -> str:
        return self.value

    @property
    def checked(self) -> bool:
        """Whether a stop for this reason means the residual was computed."""
        return self not in (StopReason.LOW_RANK, StopReason.FIXED_DEPTH, StopReason.EIGEN)


@dataclass
class SolveInfo:
    """What a solve did, column by column.

    Attributes:
        method: the method's name.
        iterations: ``(k,)`` iterations per right-hand side (0 for direct solves).
        residuals: ``(k,)`` final relative residuals ``‖b − Ax‖ / ‖b‖`` (NaN where the method
            does not compute them: arnoldi, lissa).
        converged: ``(k,)`` whether each column met its tolerance (True for methods that check
            none — arnoldi, lissa — whose residuals are NaN and whose ``str`` says so).
        reasons: why each column stopped, a [`StopReason`][linop.StopReason] per column.
        hvps: how many operator-vector products the solve made (columns counted), set-up
            included when it ran in this call.
        seconds: wall time of the call.
        extra: method-specific facts (the factorisation of an explicit solve, ...).
    """

    method: str
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    reasons: list[StopReason]
    hvps: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unchecked(
        cls, method: str, k: int, iterations: int, reason: StopReason, hvps: int = 0
    ) -> SolveInfo:
        """The report of a method that computes no residual: NaN residuals, every column done."""
        return cls(
            method=method,
            iterations=torch.full((k,), iterations, dtype=torch.long),
            residuals=torch.full((k,), float("nan")),
            converged=torch.ones(k, dtype=torch.bool),
            reasons=[reason] * k,
            hvps=hvps,
        )

    def __str__(self) -> str:
        k = len(self.reasons)
        done = int(self.converged.sum())
        if k and not any(r.checked for r in self.reasons):  # arnoldi, lissa: nothing checked
            return (
                f"{self.method}: {k} columns done (convergence not checked: residual not "
                f"computed), {self.hvps} operator products, {self.seconds:.3f} s"
            )
        finite = self.residuals[torch.isfinite(self.residuals)]
        res = f"{float(finite.max()):.2e}" if finite.numel() else "not computed"
        return (
            f"{self.method}: {done}/{k} columns converged, max iterations "
            f"{int(self.iterations.max()) if k else 0}, max relative residual {res}, "
            f"{self.hvps} operator products, {self.seconds:.3f} s"
        )


@dataclass(frozen=True)
class SolverOptions:
    """Base of every method's options: a frozen dataclass whose fields are the valid options.

    Subclasses set ``method`` (the method's name) and check their values in
    [`validate`][linop.SolverOptions.validate].
    """

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` (or ``TypeError``) for an invalid value."""

    @classmethod
    def parse(cls, **options: Any) -> SolverOptions:
        """Options from keywords; an unknown name is a ``TypeError`` listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            valid = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
            raise TypeError(
                f"unknown option(s) {unknown} for method {cls.method!r}; valid options: {valid}"
            )
        return cls(**options)

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults, as keywords."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not f.default
        }


class Strategy:
    """One inverse method: typed options, a once-only `setup`, a per-call `solve`.

    Subclasses set ``name`` and ``Options`` and implement `_setup` and `solve`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[SolverOptions]] = SolverOptions

    def __init__(self, operator: LinearOperator, options: SolverOptions) -> None:
        self.operator = operator
        self.options = options
        self._ready = False
        self.setup_hvps = 0

    def setup(self) -> int:
        """Run the set-up once; returns the operator products it made (0 when already done)."""
        if self._ready:
            return 0
        self.setup_hvps = self._setup() or 0
        self._ready = True
        return self.setup_hvps

    def _setup(self) -> int | None:
        return 0

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        """Solve ``A X = B`` for an ``(n, k)`` tensor ``B``."""
        raise NotImplementedError  # pragma: no cover - every registered method overrides it


#: The registered methods, by name.
METHODS: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a `Strategy` to `METHODS`."""
    METHODS[cls.name] = cls
    return cls
