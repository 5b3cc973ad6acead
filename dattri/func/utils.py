"""Parameter and gradient flattening helpers of ``dattri.func.utils`` (dattri 0.2.0), on linop.

Every function keeps dattri 0.2.0's signature and observable behaviour (shapes, dtypes, devices,
autograd, the in-place update of ``partial_param``); the flattening itself is
[`linop.flat.FlatSpec`][linop.FlatSpec], so a dict of tensors is laid out in insertion order exactly
as every linop operator lays it out.

Example:
    >>> import torch
    >>> from dattri.func.utils import flatten_params, _unflatten_params
    >>> model = torch.nn.Linear(3, 2)
    >>> flat = flatten_params(dict(model.named_parameters()))
    >>> flat.shape
    torch.Size([8])
    >>> _unflatten_params(flat, model)["weight"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linop.errors import DeviceMismatchError, ShapeMismatchError
from linop.flat import FlatSpec

__all__ = [
    "flatten_params",
    "flatten_func",
    "partial_param",
    "get_parameter_chunk_sizes",
]

#: The most entries one projection kernel call may address (``2³² − 1``, fast_jl's limit).
_UINT32_MAX = int(np.iinfo(np.uint32).max)


def _check_tensors(g: Any, what: str) -> list[Tensor]:
    """The values of ``g``, a non-empty dict of tensors, or a TypeError / ValueError saying
    what to pass instead."""
    if not isinstance(g, dict):
        raise TypeError(
            f"{what} takes a dict of tensors, got {type(g).__name__}; for a model pass "
            f"dict(model.named_parameters())"
        )
    if not g:
        raise ValueError(f"{what} got an empty dict: there must be one tensor or more to flatten")
    for key, value in g.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{what} takes a dict of tensors, but {key!r} is a {type(value).__name__}; "
                f"convert it with torch.as_tensor"
            )
    return list(g.values())


def _check_copy(t: Tensor, device: str | torch.device | None, what: str) -> None:
    """A DeviceMismatchError when ``t`` is on the meta device (no data to copy) and ``device``
    is a real one."""
    if device is not None and t.device.type == "meta" and torch.device(device).type != "meta":
        raise DeviceMismatchError(
            f"{what} is on the meta device, which holds no data to copy to {device}; pass "
            f"tensors with data (on the CPU or a GPU)"
        )


def _to_device(t: Tensor, device: str | torch.device | None, what: str) -> Tensor:
    """``t.to(device)``, checked by `_check_copy`."""
    _check_copy(t, device, what)
    return t.to(device)


def _check_batch_size(batch_size: int) -> None:
    """A ValueError unless ``1 <= batch_size <= 2³² − 1`` (dattri divides ``2³² − 1`` by it)."""
    if not 1 <= batch_size <= _UINT32_MAX:
        raise ValueError(
            f"batch_size must be a positive integer of at most 2**32 - 1 (the number of "
            f"examples projected at once), got {batch_size}"
        )


def _vectorize(
    g: dict[str, Tensor],
    batch_dim: bool | None = True,
    arr: Tensor | None = None,
    device: str | torch.device | None = "cuda",
) -> Tensor:
    """Flatten a dict of (per-example) tensors into one tensor.

    With ``batch_dim`` every value carries a leading batch dimension ``B`` and the result is
    ``(B, num_params)``: a value of shape ``(B, *shape)`` gives ``prod(shape)`` columns, a value of
    shape ``(B,)`` one column; the values are detached. Without it the values are flattened whole
    into ``(num_params,)``, keeping the autograd graph.

    Args:
        g: the tensors, flattened in insertion order.
        batch_dim: whether the values carry a leading batch dimension. Defaults to True.
        arr: a preallocated output; its leading columns (entries) are written and it is returned.
        device: where the result lives. Defaults to "cuda", as in dattri.

    Returns:
        ``(B, num_params)`` with ``batch_dim``, else ``(num_params,)``, in the dtype of the first
        value with ``batch_dim`` and of the last value without (dattri's rule).

    Raises:
        ValueError: if a value's leading dimension differs from the first value's, or ``g`` is
            empty.
        TypeError: if ``g`` is not a dict of tensors.
        DeviceMismatchError: if a value on the meta device would be copied to a real device.
    """
    values = _check_tensors(g, "vectorize")
    target = arr.device if arr is not None else device
    if len({value.device for value in values}) > 1:  # as dattri: every value copied to `target`
        to = target if target is not None else values[0].device
        g = {key: _to_device(value, to, f"{key!r}") for key, value in g.items()}
        values = list(g.values())
    if batch_dim:
        batch = values[0].shape[0]
        for value in values:
            if value.shape[0] != batch:
                raise ValueError(
                    f"Parameter row num doesn't match batch size: every tensor needs the leading "
                    f"batch dimension {batch}, got shape {tuple(value.shape)}"
                )
        dtype = values[0].dtype
        leaves = {key: value.detach().to(dtype) for key, value in g.items()}
        spec = FlatSpec.of({key: value[0] for key, value in leaves.items()})
        flat = spec.flatten_batched(leaves)
    else:
        dtype = values[-1].dtype
        leaves = {key: value.to(dtype) for key, value in g.items()}
        flat = FlatSpec.of(leaves).flatten(leaves)
    _check_copy(flat, target, "the tensors")
    if arr is not None:
        if batch_dim:
            arr[:, : flat.shape[1]] = flat.to(arr.device)
        else:
            arr[: flat.shape[0]] = flat.to(arr.device)
        return arr
    return flat.to(device=device, dtype=dtype, copy=len(values) == 1)


def _get_parameter_chunk_sizes(
    param_shape_list: list,
    batch_size: int,
) -> tuple[int, list[int]]:
    """Group consecutive parameter sizes into chunks small enough for one projection call.

    A chunk closes before the parameter that would bring it to ``(2³² − 1) // batch_size``
    entries or more.

    Args:
        param_shape_list: the number of features of every parameter, in order.
        batch_size: the batch size of the features.

    Returns:
        ``(max_chunk_size, params_per_chunk)``: the chunk limit and the size of every chunk.
    """
    _check_batch_size(batch_size)
    sizes = [int(s) for s in param_shape_list]
    max_chunk_size = _UINT32_MAX // batch_size
    params_per_chunk: list[int] = []
    chunk = 0
    for size in sizes:
        if chunk + size >= max_chunk_size:
            params_per_chunk.append(chunk)
            chunk = 0
        chunk += size
    rest = sum(sizes) - sum(params_per_chunk)
    if rest > 0:
        params_per_chunk.append(rest)
    return max_chunk_size, params_per_chunk


def get_parameter_chunk_sizes(
    param_shape_list: list,
    batch_size: int,
) -> tuple[int, list[int]]:
    """Split a feature dimension into chunks small enough for one projection call.

    As in dattri 0.2.0, only the first entry of ``param_shape_list`` (the total number of
    features) is split, into full chunks of ``(2³² − 1) // batch_size`` and a final remainder
    (present even when zero).

    Args:
        param_shape_list: a list whose first entry is the number of features.
        batch_size: the batch size of the features.

    Returns:
        ``(max_chunk_size, params_per_chunk)``: the chunk limit and the size of every chunk.

    Raises:
        ValueError: if ``param_shape_list`` is empty or ``batch_size`` is not in
            ``[1, 2³² − 1]``.

    Example:
        >>> get_parameter_chunk_sizes([10], 2)
        (2147483647, [10])
    """
    if len(param_shape_list) == 0:
        raise ValueError(
            "param_shape_list is empty: pass a list whose first entry is the number of features"
        )
    _check_batch_size(batch_size)
    total = param_shape_list[0]
    max_chunk_size = _UINT32_MAX // batch_size
    full, remainder = divmod(total, max_chunk_size)
    return max_chunk_size, [max_chunk_size] * full + [remainder]


def flatten_params(tensors: dict[str, Tensor]) -> Tensor:
    """Flatten a dict of tensors (e.g. ``model.named_parameters()``) into one 1-D tensor.

    The tensors are concatenated in insertion order on the device of the first one; the result is
    a new tensor (never a view of a parameter) and keeps the autograd graph, so it can be the
    point of ``hvp`` or ``ihvp`` functions.

    Args:
        tensors: the tensors.

    Returns:
        A tensor of shape ``(sum of numels,)``.

    Raises:
        TypeError: if ``tensors`` is not a dict of tensors.
        ValueError: if ``tensors`` is empty.
        DeviceMismatchError: if a tensor on the meta device would be copied to the device of the
            first tensor.

    Example:
        >>> flatten_params({"a": torch.ones(2, 2), "b": torch.zeros(1)}).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    first = _check_tensors(tensors, "flatten_params")[0]
    return _vectorize(tensors, batch_dim=False, device=first.device)


def _trainable(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _unflatten_params(tensors: Tensor, model: torch.nn.Module) -> dict[str, Tensor]:
    """Split a flat tensor into the model's trainable parameters, the inverse of
    [`flatten_params`][dattri.func.utils.flatten_params].

    Args:
        tensors: a 1-D tensor whose leading entries hold the parameters (extra entries are
            ignored, as in dattri).
        model: the module giving the names and shapes of its parameters that require gradients.

    Returns:
        A dict ``name -> view of tensors`` in the shapes of the parameters, ready for
        ``torch.func.functional_call``.
    """
    params = _trainable(model)
    if not params:
        return {}
    spec = FlatSpec.of(params)
    return spec.unflatten(tensors[: spec.size])  # type: ignore[return-value]


def _unflatten_params_layerwise(
    tensors: tuple[Tensor, ...],
    model: torch.nn.Module,
) -> dict[str, Tensor]:
    """Reshape a tuple of flat per-layer tensors into the model's trainable parameters.

    Args:
        tensors: one tensor per trainable parameter, in ``named_parameters`` order.
        model: the module giving the names and shapes.

    Returns:
        A dict ``name -> tensors[i].view(shape)``.

    Raises:
        ShapeMismatchError: if there are fewer tensors than trainable parameters, or a tensor's
            number of entries is not its parameter's.
    """
    params = _trainable(model)
    if not params:
        return {}
    spec = FlatSpec.of(params)
    if len(tensors) < len(spec.keys):
        raise ShapeMismatchError(
            f"got {len(tensors)} per-layer tensors for {len(spec.keys)} trainable parameters "
            f"({', '.join(map(str, spec.keys))}); pass one tensor per parameter, in "
            f"named_parameters order"
        )
    for i, (key, shape, numel) in enumerate(zip(spec.keys, spec.shapes, spec.numels, strict=True)):
        if tensors[i].numel() != numel:
            raise ShapeMismatchError(
                f"per-layer tensor {i} has shape {tuple(tensors[i].shape)} ({tensors[i].numel()} "
                f"entries) but parameter {key!r} has shape {tuple(shape)} ({numel} entries); "
                f"pass one tensor per parameter, in named_parameters order"
            )
    layout = enumerate(zip(spec.keys, spec.shapes, strict=True))
    return {key: tensors[i].view(shape) for i, (key, shape) in layout}


def flatten_func(model: torch.nn.Module, param_num: int = 0) -> Callable:
    """A decorator making a function of a parameter dict take flat parameters instead.

    The wrapped function's argument at position ``param_num`` may then be a flat tensor (split
    with `_unflatten_params`) or a tuple of per-layer flat tensors (reshaped with
    `_unflatten_params_layerwise`).

    Args:
        model: the module giving the names and shapes of the parameters.
        param_num: the position of the parameter argument.

    Returns:
        The decorator.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> @flatten_func(model)
        ... def f(params, x):
        ...     return torch.func.functional_call(model, params, (x,)).sum()
        >>> f(flatten_params(dict(model.named_parameters())), torch.ones(2, 3)).shape
        torch.Size([])
    """

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            new_args = list(args)
            if isinstance(args[param_num], tuple):
                new_args[param_num] = _unflatten_params_layerwise(args[param_num], model)
            else:
                new_args[param_num] = _unflatten_params(args[param_num], model)
            return function(*new_args, **kwargs)

        return wrapped

    return decorator


def partial_param(
    full_param: dict[str, Tensor],
    layer_name: list[str],
    param_num: int = 0,
) -> Callable:
    """A decorator making a function of the full flat parameters take some layers' only.

    On every call the argument at ``param_num`` (the flat parameters of the layers in
    ``layer_name``, in that order) is split into those layers, written into ``full_param`` (which
    is updated in place, as in dattri) and the function receives
    [`flatten_params`][dattri.func.utils.flatten_params] of the updated ``full_param``.

    Args:
        full_param: all parameters, by name; updated in place on every call.
        layer_name: the names of the layers the wrapped function takes.
        param_num: the position of the parameter argument.

    Returns:
        The decorator. Its function raises a ``ShapeMismatchError`` (before updating
        ``full_param``) when the vector has fewer entries than the layers.

    Example:
        >>> full = {"a": torch.zeros(2), "b": torch.ones(3)}
        >>> @partial_param(full, ["b"])
        ... def f(flat):
        ...     return flat
        >>> f(torch.full((3,), 5.0)).tolist()
        [0.0, 0.0, 5.0, 5.0, 5.0]
    """

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            new_args = list(args)
            flat = new_args[param_num]
            sizes = [(layer, full_param[layer].numel()) for layer in layer_name]
            needed = sum(size for _, size in sizes)
            if isinstance(flat, Tensor) and flat.ndim >= 1 and flat.shape[0] < needed:
                # checked before full_param is touched; more entries are ignored, as in dattri
                raise ShapeMismatchError(
                    f"the parameter vector has {flat.shape[0]} entries but the layers "
                    f"{list(layer_name)} have {needed} ("
                    + ", ".join(f"{layer!r}: {size}" for layer, size in sizes)
                    + "); pass their parameters flattened, in that order"
                )
            start = 0
            for layer in layer_name:
                size = full_param[layer].numel()
                full_param[layer] = flat[start : start + size]
                start += size
            new_args[param_num] = flatten_params(full_param)
            return function(*new_args, **kwargs)

        return wrapped

    return decorator


#: linop's warnings point past this module, at its caller (see linop._warn)
__linop_wrapper__ = True
