"""Influence functions on real data: which training images helped or hurt a test prediction.

Trains a logistic regression on scikit-learn's bundled 8×8 digits (no download) and asks, for a
few test images, which training images changed their loss most. The influence-function estimate
of the change of a test image's loss when training image ``j`` is left out (and the model
retrained) is

    g_testᵀ (H + λI)⁻¹ g_j / n

with ``g`` per-example loss gradients, ``H`` the Hessian of the mean training loss at the trained
parameters, ``λ`` the L2 weight of the training objective and ``n`` the number of training images.
linop gives ``H`` as an operator that is never formed, ``H + λI`` as an operator that knows ``λ``,
and its inverse by conjugate gradients, applied to all test gradients at once.

Run ``python examples/influence_digits.py`` (about 10 s on 2 CPU cores). How well such estimates
rank training points against leave-one-out retraining, with 11 inverse methods, is a benchmark:
``python -m benchmarks.attribution``.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch.func import grad, vmap

from linop import HessianOperator, IdentityOperator

LAM = 1e-3  # the training objective: mean cross-entropy + (λ/2)‖θ‖²
NUM_TRAIN = 1500  # of the 1797 digits; the other 297 are test images


def loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a logistic regression; ``theta``: 64×10 weights, then 10 biases."""
    return torch.nn.functional.cross_entropy(X @ theta[:640].view(64, 10) + theta[640:], y)


def train(X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Minimise the training objective from ``theta`` with L-BFGS, to ‖∇‖ ≈ 1e-9."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta], max_iter=2000, tolerance_grad=1e-10, tolerance_change=0.0, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> torch.Tensor:
        opt.zero_grad()
        value = loss(theta, X, y) + 0.5 * LAM * theta.dot(theta)
        value.backward()
        return value

    opt.step(objective)
    return theta.detach()


def picture(x: torch.Tensor) -> list[str]:
    """An 8×8 digit (pixels in [0, 1]) as 8 lines of text, denser characters for darker pixels."""
    return ["".join(" .:-=+*#%@"[int(v * 9.99)] for v in row) for row in x.view(8, 8)]


def main() -> None:
    t_start = time.perf_counter()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    images, labels = load_digits(return_X_y=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    X_all, y_all = torch.tensor(images / 16.0)[order], torch.tensor(labels)[order]  # float64
    X, y = X_all[:NUM_TRAIN], y_all[:NUM_TRAIN]
    X_test, y_test = X_all[NUM_TRAIN:], y_all[NUM_TRAIN:]
    n = len(X)

    # 1. Train, in float64: the estimate assumes the gradient of the objective is zero.
    theta = train(X, y, torch.zeros(650, dtype=torch.float64))
    logits = X_test @ theta[:640].view(64, 10) + theta[640:]
    test_loss = torch.nn.functional.cross_entropy(logits, y_test, reduction="none")
    predicted = logits.argmax(1)
    print(
        f"Logistic regression on scikit-learn's digits (8×8 images, 10 classes): {n} training "
        f"and {len(X_test)} test images,\n650 parameters, λ = {LAM:g}; test accuracy "
        f"{float((predicted == y_test).double().mean()):.1%}."
    )

    # 2. The Hessian of the training objective, H + λI: an operator, never a 650×650 matrix.
    #    from_data streams the training set in batches of 500 for every Hessian-vector product.
    H = HessianOperator.from_data(loss, theta, (X, y), batch_size=500, psd=True)
    A = H + LAM * IdentityOperator.like(H)

    # 3. Per-example loss gradients (torch.func), as columns: (650, n) for the training images,
    #    (650, 3) for the test images shown: the first two and the one with the highest loss.
    shown = [0, 1, int(test_loss.argmax())]
    per_example = vmap(grad(lambda th, x, t: loss(th, x[None], t[None])), in_dims=(None, 0, 0))
    G_train = per_example(theta, X, y).T
    G_test = per_example(theta, X_test[shown], y_test[shown]).T

    # 4. One lazy inverse, (H + λI)⁻¹ by conjugate gradients, applied to the three test gradients
    #    at once; then every (test, training image) score in one matrix product.
    inverse = A.inverse("cg", rtol=1e-8)
    scores = (inverse @ G_test).T @ G_train / n  # (3, n)
    info = inverse.info
    print(
        f"(H + λI)⁻¹ g_test by conjugate gradients for {len(shown)} test images: "
        f"{int(info.converged.sum())} of {len(shown)} converged,\nat most "
        f"{int(info.iterations.max())} iterations, {info.hvps} Hessian-vector products."
    )
    print(
        "\nHow to read this: the influence of training image j on test image t is the predicted "
        "change of t's\nloss (cross-entropy) if j were left out of training. Positive (+): j "
        "helped, t's loss would rise\nwithout it. Negative (−): j hurt, t's loss would fall "
        "without it. The estimate is first order in j's\nweight 1/n; each check below retrains "
        "without the most helpful image and compares."
    )

    for row, t in enumerate(shown):
        ranked = scores[row].argsort(descending=True).tolist()
        helpful, harmful = ranked[:3], ranked[-1:-4:-1]
        verdict = "right" if predicted[t] == y_test[t] else "wrong"
        print(
            f"\ntest #{t}: a {int(y_test[t])}, predicted {int(predicted[t])} ({verdict}), "
            f"loss {float(test_loss[t]):.3g}"
        )
        for name, js in (("most helpful", helpful), ("most harmful", harmful)):
            items = ", ".join(f"#{j} (a {int(y[j])}) {float(scores[row, j]):+.2e}" for j in js)
            print(f"  {name}: {items}")
        columns = [(f"test #{t}", X_test[t])]
        columns += [(f"+ #{j}", X[j]) for j in helpful] + [(f"− #{j}", X[j]) for j in harmful]
        print("  " + "  ".join(f"{c:<9}" for c, _ in columns))
        for lines in zip(*(picture(x) for _, x in columns), strict=True):
            print("  " + "  ".join(f"{line:<9}" for line in lines))

        # 5. The check: retrain without the most helpful image, starting from the trained model.
        j = helpful[0]
        keep = torch.arange(n) != j
        theta_j = train(X[keep], y[keep], theta)
        x_t, y_t = X_test[t : t + 1], y_test[t : t + 1]
        actual = float(loss(theta_j, x_t, y_t) - loss(theta, x_t, y_t))
        print(
            f"  check: retrained without #{j}, test #{t}'s loss changes by {actual:+.2e} "
            f"(predicted {float(scores[row, j]):+.2e})"
        )

    print(
        f"\nDone in {time.perf_counter() - t_start:.1f} s. How well these estimates rank training "
        "images, against\nleave-one-out retraining, for 11 inverse methods: "
        "python -m benchmarks.attribution"
    )


if __name__ == "__main__":
    main()
