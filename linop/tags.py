"""Structure tags and the rules by which the operator algebra propagates them.

Tags are *sound*: an operator carries a tag only when the structure is guaranteed. The rules are
small and explicit:

- ``psd`` (positive semi-definite) and ``nsd`` (negative semi-definite) imply ``symmetric``;
- a sum keeps a tag only if every term has it;
- ``c * A`` keeps ``symmetric``; for ``c > 0`` it keeps psd/nsd, for ``c < 0`` it swaps them, and
  ``0 * A`` is both;
- a product of two or more operators drops every tag;
- an adjoint keeps every tag (all tags describe self-adjoint structure).

Example:
    >>> from linop.tags import Tags
    >>> Tags(psd=True).scale(-2.0)
    Tags(symmetric=True, psd=False, nsd=True)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tags"]


@dataclass(frozen=True)
class Tags:
    """The structure an operator is known to have.

    Attributes:
        symmetric: ``A == A.T``.
        psd: ``xᵀ A x ≥ 0`` for every ``x`` (implies symmetric).
        nsd: ``xᵀ A x ≤ 0`` for every ``x`` (implies symmetric).
    """

    symmetric: bool = False
    psd: bool = False
    nsd: bool = False

    def __post_init__(self) -> None:
        if self.psd or self.nsd:
            object.__setattr__(self, "symmetric", True)

    def replace(self, **changes: bool) -> Tags:
        """Return tags with the given fields set; unknown names raise ``TypeError``.

        Setting ``symmetric=False`` also clears psd and nsd, since they imply symmetry.
        """
        unknown = set(changes) - {"symmetric", "psd", "nsd"}
        if unknown:
            raise TypeError(f"unknown tag(s) {sorted(unknown)}; valid tags are symmetric, psd, nsd")
        fields = {"symmetric": self.symmetric, "psd": self.psd, "nsd": self.nsd}
        fields.update({k: bool(v) for k, v in changes.items()})
        if changes.get("symmetric") is False:
            fields["psd"] = fields["nsd"] = False
        return Tags(**fields)

    def scale(self, c: float) -> Tags:
        """Tags of ``c * A`` for a real scalar ``c``."""
        if c == 0:
            return Tags(symmetric=True, psd=True, nsd=True)
        if c > 0:
            return self
        return Tags(symmetric=self.symmetric, psd=self.nsd, nsd=self.psd)

    @staticmethod
    def sum(tags: list[Tags]) -> Tags:
        """Tags of a sum: a tag survives only if every term has it."""
        return Tags(
            symmetric=all(t.symmetric for t in tags),
            psd=all(t.psd for t in tags),
            nsd=all(t.nsd for t in tags),
        )

    @staticmethod
    def product(tags: list[Tags]) -> Tags:
        """Tags of a product of several operators: none survive."""
        return tags[0] if len(tags) == 1 else Tags()
