"""KFACOperator and EKFACOperator (linop.curvature.kfac) against what theory makes exact, with
independent float64 references:

- the Kronecker layout: each block of ``to_dense`` is ``G ⊗ [A]`` in the parameters' own order
  (weight row-major, then bias; transposed weights), zero between layers;
- the factors: ``A`` from the layer inputs, ``G`` of the last layer from the output Hessians;
- one example, one linear layer per block, type-2: K-FAC's blocks equal the Gauss-Newton's;
- EK-FAC's eigenvalues equal the diagonal, in its eigenbasis, of the GGN (type-2), empirical
  Fisher (empirical) or MC Fisher with the same samples (mc), for any data, convolutions included;
- convolution: a kernel covering the whole image is a linear layer;
- exact ``eigh``, the closed-form damped inverse (method "eigen"), the preconditioner of CG;
- datasets: batches weigh by their examples; bad input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from linop import (
    EKFACOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    NonFiniteError,
    SingularOperatorError,
    StopReason,
)
from linop.testing import assert_close, check_operator
from tests.linop.curvature._models import D64, classification, cnn, gen, mlp

CE = torch.nn.CrossEntropyLoss()


def _images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return torch.randn(n, 1, 5, 5, dtype=D64, generator=g), torch.randint(0, 3, (n,), generator=g)


def _flat_index(layer, r: int, c: int) -> int:
    """Where entry ``(r, c)`` of a layer's gradient matrix ``[W | b]`` sits in the flat vector."""
    o, i = layer.out_features, layer.in_features
    if c == i:
        return layer.bias[0] + r
    return layer.weight[0] + (c * o + r if layer.transposed else r * i + c)


def _block_of(K, dense: torch.Tensor, name: str) -> torch.Tensor:
    """The block of ``dense`` over layer ``name``'s parameters, in gradient-matrix order."""
    block = next(b for b in K.blocks if b.layer.name == name)
    o, i2 = block.layer.shape
    idx = torch.tensor([_flat_index(block.layer, r, c) for r in range(o) for c in range(i2)])
    return dense[idx][:, idx]


def _rotated_diagonal(block, dense_block: torch.Tensor) -> torch.Tensor:
    Q = torch.kron(block.QG, block.QA)
    return torch.diagonal(Q.T @ dense_block @ Q).reshape(block.values.shape)


@pytest.mark.parametrize("kind", ["type2", "mc", "empirical"])
def test_blocks_are_kronecker_products_of_the_factors_and_the_operator_is_sound(kind):
    model = mlp()
    X, y = classification()
    K = KFACOperator.from_module(model, CE, (X, y), kind=kind, mc_samples=3)
    dense = K.to_dense()
    check_operator(K, dense)
    start = 0
    for block in K.blocks:
        kron = torch.kron(block.G, block.A)
        assert_close(_block_of(K, dense, block.layer.name), kron, 1e-12)
        size = block.values.numel()
        assert not dense[start : start + size, start + size :].any()  # block diagonal
        start += size
    assert K.tags.psd and K.shape[0] == sum(p.numel() for p in model.parameters())


def test_factors_are_the_input_covariance_and_the_output_hessian_mean():
    model = mlp()
    X, y = classification()
    K = KFACOperator.from_module(model, CE, (X, y), kind="type2")
    A0, _ = K.factors()["0"]
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=D64)], 1)
    assert_close(A0, Xa.T @ Xa / len(X), 1e-12)
    _, G_last = K.factors()["4"]
    p = torch.softmax(model(X), -1).detach()
    H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    assert_close(G_last, H.mean(0), 1e-12)


def test_one_example_type2_equals_the_gauss_newton_blocks():
    model = mlp()
    X, y = classification(n=1)
    K = KFACOperator.from_module(model, CE, (X, y), kind="type2")
    G = GGNOperator.from_module(model, CE, (X, y)).to_dense()
    dense = K.to_dense()
    start = 0
    for block in K.blocks:
        size = block.values.numel()
        s = slice(start, start + size)
        assert_close(dense[s, s], G[s, s], 1e-10)
        start += size


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["type2", "empirical", "mc"])
def test_ekfac_eigenvalues_are_the_curvature_diagonal_in_the_kronecker_eigenbasis(net, kind):
    model = mlp() if net == "mlp" else cnn()
    X, y = classification() if net == "mlp" else _images()
    E = EKFACOperator.from_module(model, CE, (X, y), kind=kind, mc_samples=2, seed=5)
    if kind == "type2":
        C = GGNOperator.from_module(model, CE, (X, y)).to_dense()
    else:
        C = FisherOperator.from_module(
            model, CE, (X, y), kind=kind, mc_samples=2, seed=5
        ).to_dense()
    for block in E.blocks:
        assert_close(
            block.values, _rotated_diagonal(block, _block_of(E, C, block.layer.name)), 1e-9
        )
    K = KFACOperator.from_module(model, CE, (X, y), kind=kind, mc_samples=2, seed=5)
    for b, k in zip(E.blocks, K.blocks, strict=True):  # the same eigenbasis
        assert_close(b.QG @ b.QG.T, k.QG @ k.QG.T, 1e-9) and assert_close(b.A, k.A, 1e-12)
    check_operator(E, E.to_dense())


def test_a_convolution_covering_the_image_is_a_linear_layer():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 4), torch.nn.Flatten(), torch.nn.Tanh(),
                               torch.nn.Linear(3, 2)).to(D64)  # fmt: skip
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 3), torch.nn.Tanh(),
                              torch.nn.Linear(3, 2)).to(D64)  # fmt: skip
    with torch.no_grad():
        lin[1].weight.copy_(conv[0].weight.reshape(3, 32))
        lin[1].bias.copy_(conv[0].bias)
        lin[3].load_state_dict(conv[3].state_dict())
    g = gen(2)
    X, y = torch.randn(7, 2, 4, 4, dtype=D64, generator=g), torch.randint(0, 2, (7,), generator=g)
    for cls in (KFACOperator, EKFACOperator):
        a = cls.from_module(conv, CE, (X, y), kind="type2").to_dense()
        b = cls.from_module(lin, CE, (X, y), kind="type2").to_dense()
        assert_close(a, b, 1e-10)


def test_convolution_factors_average_patches_and_sum_gradients_over_locations():
    model = cnn()
    X, y = _images()
    K = KFACOperator.from_module(model, CE, (X, y), kind="empirical")
    A, G = K.factors()["0"]
    patches = [
        torch.cat([X[n, :, i : i + 3, j : j + 3].reshape(-1), torch.ones(1, dtype=D64)])
        for n in range(len(X)) for i in range(3) for j in range(3)
    ]  # fmt: skip
    P = torch.stack(patches)
    assert_close(A, P.T @ P / (len(X) * 9), 1e-12)
    # G: the per-location output gradients of each example's own loss, summed, over N
    out = model[0](X).detach().requires_grad_(True)
    losses = F.cross_entropy(model[3](model[2](model[1](out))), y, reduction="none")
    g = torch.autograd.grad(losses.sum(), out)[0]  # (N, 2, 3, 3): example n's own gradient
    rows = g.permute(0, 2, 3, 1).reshape(-1, 2)
    assert_close(G, rows.T @ rows / len(X), 1e-12)


class Conv1D(torch.nn.Module):
    """GPT-2's transposed linear layer: ``x @ weight + bias`` with ``weight`` ``(in, out)``."""

    def __init__(self, nx: int, nf: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf, dtype=D64) * 0.5)
        self.bias = torch.nn.Parameter(torch.randn(nf, dtype=D64) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class MyTransposed(Conv1D):
    """The same layer under another name: registered through ``transposed=``."""


@pytest.mark.parametrize("layer", [Conv1D, MyTransposed])
def test_transposed_linear_layers_equal_their_linear_twin(layer):
    torch.manual_seed(1)
    t = torch.nn.Sequential(layer(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(D64)
    lin = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(D64)
    with torch.no_grad():
        lin[0].weight.copy_(t[0].weight.T)
        lin[0].bias.copy_(t[0].bias)
        lin[2].load_state_dict(t[2].state_dict())
    X, y = classification()
    options = {"transposed": (MyTransposed,)} if layer is MyTransposed else {}
    Kt = KFACOperator.from_module(t, CE, (X, y), kind="type2", **options)
    Kl = KFACOperator.from_module(lin, CE, (X, y), kind="type2")
    perm = torch.arange(20).reshape(5, 4).T.reshape(-1)  # W (5, 4) row-major ↔ Wᵀ (4, 5)
    perm = torch.cat([perm, torch.arange(20, Kl.shape[0])])
    assert_close(Kt.to_dense(), Kl.to_dense()[perm][:, perm], 1e-12)
    if layer is MyTransposed:
        with pytest.raises(ValueError, match=r"0\.weight \(MyTransposed\)"):
            KFACOperator.from_module(t, CE, (X, y))


@pytest.mark.parametrize("cls", [KFACOperator, EKFACOperator])
def test_exact_eigh_and_closed_form_damped_inverse(cls):
    model = mlp()
    X, y = classification()
    K = cls.from_module(model, CE, (X, y), kind="type2")
    dense = K.to_dense()
    low = K.eigh(6)
    assert_close(low.values, torch.linalg.eigvalsh(dense).flip(0)[:6], 1e-10)
    assert_close(dense @ low.vectors, low.vectors * low.values, 1e-10)
    assert_close(low.vectors.T @ low.vectors, torch.eye(6, dtype=D64), 1e-12)
    small = K.eigh(3, which="smallest")
    assert_close(small.values, torch.linalg.eigvalsh(dense)[:3], 1e-10)
    lam = 1e-2
    inv = K.regularize(lam).inverse()
    B = torch.randn(K.shape[0], 4, dtype=D64, generator=gen(3))
    X_ = inv @ B
    ref = torch.linalg.solve(dense + lam * torch.eye(K.shape[0], dtype=D64), B)
    assert_close(X_, ref, 1e-9)
    assert inv.method == "eigen" and inv.info.reasons == [StopReason.EIGEN] * 4
    assert inv.info.hvps == 0 and inv.info.extra["shift"] == lam
    eye = torch.eye(K.shape[0], dtype=D64)
    assert_close(inv.to_dense(), torch.linalg.inv(dense + lam * eye), 1e-8)
    assert inv.tags.psd and inv.adjoint() is inv
    with pytest.raises(SingularOperatorError, match="regularize"):
        K.inverse() @ B  # the softmax null space: singular without a shift
    assert K.regularize(lam).inverse("cg").method == "cg"  # another method when named
    with pytest.raises(TypeError, match="eigendecomposition"):
        HessianOperator(lambda w: (w**4).sum(), (torch.ones(3, dtype=D64),)).inverse("eigen")


def test_kfac_preconditions_cg_on_the_gauss_newton():
    # a softmax regression on badly scaled features near uniform predictions: the GGN is close
    # to G ⊗ A, whose A carries the scaling that makes plain CG slow
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).to(D64)
    with torch.no_grad():
        model.weight.mul_(0.01)
    g = gen(4)
    scales = 10 ** torch.linspace(-1.5, 1.5, 6, dtype=D64)
    X, y = (
        torch.randn(256, 6, dtype=D64, generator=g) * scales,
        torch.randint(0, 4, (256,), generator=g),
    )
    lam = 1e-4
    G = GGNOperator.from_module(model, CE, (X, y)).regularize(lam)
    K = KFACOperator.from_module(model, CE, (X, y), kind="type2").regularize(lam)
    B = torch.randn(G.shape[0], 3, dtype=D64, generator=gen(5))
    plain = G.inverse("cg", rtol=1e-8)
    pre = G.inverse("cg", rtol=1e-8, preconditioner=K.inverse())
    X1, X2 = plain @ B, pre @ B
    assert_close(X1, X2, 1e-6)
    assert pre.info.converged.all() and plain.info.converged.all()
    assert 2 * int(pre.info.iterations.max()) < int(plain.info.iterations.max())


def test_batches_weigh_by_their_examples_and_match_one_batch():
    model = cnn()
    X, y = _images(n=7)
    one = EKFACOperator.from_module(model, CE, (X, y), kind="mc", seed=3)
    batches = [(X[:2], y[:2]), (X[2:7], y[2:7])]
    many = EKFACOperator.from_module(model, CE, batches, kind="mc", seed=3)
    assert_close(many.to_dense(), one.to_dense(), 1e-10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=3)
    assert_close(KFACOperator.from_module(model, CE, loader, kind="mc", seed=3).to_dense(),
                 KFACOperator.from_module(model, CE, (X, y), kind="mc", seed=3).to_dense(),
                 1e-10)  # fmt: skip


def test_mse_and_float32_and_restricting_to_modules():
    model = mlp(c=2).float()
    g = gen(6)
    X, y = torch.randn(10, 4, generator=g), torch.randn(10, 2, generator=g)
    K = KFACOperator.from_module(model, torch.nn.MSELoss(), (X, y), kind="type2")
    assert K.dtype == torch.float32
    _, G_last = K.factors()["4"]
    assert_close(G_last, torch.eye(2, dtype=D64), 1e-6)  # MSE over D = 2 outputs: 2/D · I
    part = KFACOperator.from_module(model, torch.nn.MSELoss(), (X, y), kind="type2", modules=["4"])
    assert part.shape == (12, 12) and part.names == ["4.weight", "4.bias"]
    assert_close(part.to_dense(), K.to_dense()[-12:, -12:], 1e-6)


def test_bad_input_is_refused_with_a_message():
    X, y = classification()
    norm = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LayerNorm(5),
                               torch.nn.Linear(5, 3)).to(D64)  # fmt: skip
    with pytest.raises(ValueError, match=r"1\.weight \(LayerNorm\).*modules="):
        KFACOperator.from_module(norm, CE, (X, y))
    assert KFACOperator.from_module(norm, CE, (X, y), modules=["0", "2"]).shape == (43, 43)
    with pytest.raises(ValueError, match="not in the model"):
        KFACOperator.from_module(norm, CE, (X, y), modules=["9"])
    drop = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).to(D64).train()
    with pytest.raises(ValueError, match="eval"):
        KFACOperator.from_module(drop, CE, (X, y))
    model = mlp()
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        KFACOperator.from_module(model, CE, (Xn, y), kind="empirical")
    with pytest.raises(ValueError, match="unknown kind"):
        KFACOperator.from_module(model, CE, (X, y), kind="type1")
    with pytest.raises(ValueError, match="kind='mc'"):
        KFACOperator.from_module(
            model, lambda o, t: ((o - t) ** 4).mean(), (X, y.double()[:, None])
        )
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2), torch.nn.Flatten()).to(D64)
    with pytest.raises(ValueError, match="groups=1"):
        KFACOperator.from_module(grouped, CE, (torch.randn(3, 2, 3, 3, dtype=D64), y[:3] % 2))
    shared = torch.nn.Linear(3, 3).to(D64)
    twice = torch.nn.Sequential(shared, torch.nn.Tanh(), shared)
    with pytest.raises(ValueError, match="more than once"):
        KFACOperator.from_module(twice, CE, (torch.randn(4, 3, dtype=D64), y[:4]))
    with pytest.raises(ValueError, match="mean"):
        KFACOperator.from_module(model, torch.nn.CrossEntropyLoss(reduction="sum"), (X, y))
    with pytest.raises(TypeError, match="which"):
        KFACOperator.from_module(model, CE, (X, y)).eigh(2, maxiter=3)
