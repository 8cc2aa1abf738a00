"""Per-sample gradients: the one engine behind the Fisher fallback and the gradient selector.

For a batch ``x`` (samples along the first dimension), sample ``i``'s gradient with respect to
chosen trainable parameters of either

* a scalar objective, ``loss_fn(model(x[i:i+1]), targets[i:i+1])`` (``loss_fn=``): one gradient
  per sample, shaped ``(n, *p.shape)``; or
* ``K`` linear objectives ``<model(x[i:i+1]), cotangents[i:i+1, k]>`` (``cotangents=``, shaped
  ``(B, K, *output.shape[1:])`` and treated as constants): the vector-Jacobian products
  ``J_i^T cotangents[i, k]``, shaped ``(n, K, *p.shape)``.  The Fisher's fallback uses these
  with its cotangents at the logits (``p_i - onehot(y_i)`` for the empirical Fisher).

Every sample runs through the model on its own (a batch of one), so with the model in eval mode
(the caller's business) no sample affects another.  Two engines give the same numbers:

``"vmap"``
    ``torch.func``: ``functional_call`` of the model on one sample, ``vjp`` with respect to the
    chosen parameters, ``vmap`` over the samples.  The ``K`` cotangents are pulled back one after
    another in Python (a nested ``vmap`` over them trips batching rules of some backward ops,
    e.g. PReLU's).
``"loop"``
    one forward and ``K`` (or one) ``torch.autograd.grad`` calls per sample.  Works for any model
    and is often faster for small CNNs on few CPU cores.

Samples go in chunks whose per-sample gradients hold at most ``max_elements`` numbers, so memory
stays bounded whatever the batch size.  :func:`iter_per_sample_grads` yields the chunks;
:func:`per_sample_reduce` folds each sample's gradients to values (e.g. :func:`grad_norms`,
:func:`grad_dots`), :func:`sum_of_squares` sums the squared gradients over samples and objectives.

The inputs are moved to the model's device and floating dtype (:func:`~.params.to_model`) and
everything is computed there; a parameter the objective does not depend on gets zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .params import to_model

__all__ = [
    "ENGINES",
    "MAX_ELEMENTS",
    "grad_dots",
    "grad_norms",
    "iter_per_sample_grads",
    "per_sample_reduce",
    "sum_of_squares",
]

#: The two ways of computing per-sample gradients.
ENGINES: tuple[str, ...] = ("vmap", "loop")

#: Default bound on the numbers one chunk's per-sample gradients may hold.
MAX_ELEMENTS = 1 << 25

#: ``loss_fn(outputs, targets) -> scalar`` for the outputs and targets of one sample (batch of one).
LossFn = Callable[[Tensor, Tensor | None], Tensor]


def _chosen(model: nn.Module, names: Sequence[str] | None) -> dict[str, Tensor]:
    """The parameters ``names`` (default: every trainable one), in ``named_parameters`` order."""
    params = dict(model.named_parameters())
    if names is None:
        chosen = {n: p for n, p in params.items() if p.requires_grad}
    else:
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"The model has no parameters named {unknown}.")
        wanted = set(names)
        chosen = {n: p for n, p in params.items() if n in wanted}
    if not chosen:
        raise ValueError("The model has no parameters that require gradients.")
    return chosen


def iter_per_sample_grads(
    model: nn.Module,
    x: Tensor,
    *,
    loss_fn: LossFn | None = None,
    targets: Tensor | None = None,
    cotangents: Tensor | None = None,
    names: Sequence[str] | None = None,
    engine: str = "vmap",
    max_elements: int = MAX_ELEMENTS,
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Yield ``(start, grads)`` chunk by chunk: the per-sample gradients of ``x[start:start + n]``.

    Args:
        model: maps a batch to outputs; its mode (eval) is the caller's business.
        x: the batch, samples along the first dimension.
        loss_fn: scalar objective ``loss_fn(model(x[i:i+1]), targets[i:i+1])`` (or
            ``loss_fn(output, None)`` without targets).  Exactly one of ``loss_fn`` and
            ``cotangents`` must be given.
        targets: per-sample targets for ``loss_fn`` (integer labels stay integer).
        cotangents: ``(B, K, *output.shape[1:])``: sample ``i``'s ``K`` cotangents at its output.
        names: the parameters to differentiate (default: every trainable one).
        engine: ``"vmap"`` or ``"loop"`` (see the module docstring).
        max_elements: at most this many numbers in one chunk's gradients (at least one sample).

    Yields:
        ``(start, grads)`` with ``grads[name]`` shaped ``(n, *p.shape)`` for ``loss_fn`` and
        ``(n, K, *p.shape)`` for ``cotangents``, in ``named_parameters`` order, detached, on the
        model's device and in its dtype.
    """
    for start, parts in _chunks(model, x, loss_fn, targets, cotangents, names, engine, max_elements):
        if loss_fn is not None:
            yield start, parts[0]
        elif len(parts) == 1:  # one cotangent: a view, no copy
            yield start, {n: g.unsqueeze(1) for n, g in parts[0].items()}
        else:
            yield start, {n: torch.stack([part[n] for part in parts], dim=1) for n in parts[0]}


def _chunks(
    model: nn.Module,
    x: Tensor,
    loss_fn: LossFn | None,
    targets: Tensor | None,
    cotangents: Tensor | None,
    names: Sequence[str] | None,
    engine: str,
    max_elements: int,
) -> Iterator[tuple[int, list[dict[str, Tensor]]]]:
    """The engine: ``(start, parts)`` per chunk, ``parts[k][name]`` shaped ``(n, *p.shape)``.

    One part per cotangent (a single one for ``loss_fn``), kept apart so that a reduction that
    treats the cotangents separately (:func:`sum_of_squares`) never copies them into one tensor.
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown gradient engine {engine!r}; expected 'vmap' or 'loop'.")
    if (loss_fn is None) == (cotangents is None):
        raise ValueError("Give exactly one of loss_fn and cotangents.")
    chosen = _chosen(model, names)
    x, targets, cotangents = to_model((x, targets, cotangents), model)
    b = x.shape[0]
    if cotangents is not None and cotangents.shape[0] != b:
        raise ValueError(f"cotangents has {cotangents.shape[0]} rows for a batch of {b}.")
    if targets is not None and targets.shape[0] != b:
        raise ValueError(f"targets has {targets.shape[0]} rows for a batch of {b}.")
    k = 1 if cotangents is None else cotangents.shape[1]
    size = k * sum(p.numel() for p in chosen.values())
    chunk = max(1, min(b, max_elements // max(1, size)))
    step = _vmap_step(model, chosen, loss_fn) if engine == "vmap" else _loop_step(model, chosen, loss_fn)
    aux = targets if cotangents is None else cotangents
    for start in range(0, b, chunk):
        part = None if aux is None else aux[start : start + chunk]
        with torch.enable_grad():  # not held across the yield: the caller keeps its own mode
            parts = step(x[start : start + chunk], part)
        yield start, parts


def _vmap_step(model: nn.Module, chosen: dict[str, Tensor], loss_fn: LossFn | None):
    from torch.func import functional_call, vjp, vmap

    params = {n: p.detach() for n, p in chosen.items()}
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    rest.update({n: t.detach() for n, t in model.named_buffers()})

    def one_sample(p, xi, ai):
        def value_of(q):
            out = functional_call(model, (q, rest), (xi.unsqueeze(0),))
            if loss_fn is None:
                return out
            return loss_fn(out, None if ai is None else ai.unsqueeze(0))

        value, pullback = vjp(value_of, p)
        if loss_fn is not None:
            return [pullback(torch.ones_like(value))[0]]
        # one pullback per cotangent (a nested vmap over them trips batching
        # rules of some backward ops, e.g. PReLU's)
        return [pullback(ai[j].unsqueeze(0))[0] for j in range(ai.shape[0])]

    def step(x: Tensor, aux: Tensor | None) -> list[dict[str, Tensor]]:
        batched = vmap(one_sample, in_dims=(None, 0, None if aux is None else 0))
        return batched(params, x, aux)

    return step


def _loop_step(model: nn.Module, chosen: dict[str, Tensor], loss_fn: LossFn | None):
    names = list(chosen)
    params = list(chosen.values())

    def grads_of(value: Tensor, cot: Tensor | None, retain: bool) -> list[Tensor]:
        if not value.requires_grad:  # the objective does not depend on the parameters
            return [torch.zeros_like(p) for p in params]
        grads = torch.autograd.grad(value, params, cot, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    def step(x: Tensor, aux: Tensor | None) -> list[dict[str, Tensor]]:
        rows: list[list[list[Tensor]]] = []  # rows[i][k][j]: sample i, cotangent k, parameter j
        for i in range(x.shape[0]):
            out = model(x[i : i + 1])
            if loss_fn is not None:
                rows.append([grads_of(loss_fn(out, None if aux is None else aux[i : i + 1]), None, False)])
                continue
            k = aux.shape[1]
            rows.append([grads_of(out, aux[i : i + 1, j], j + 1 < k) for j in range(k)])
        return [{n: torch.stack([row[k][j] for row in rows]) for j, n in enumerate(names)} for k in range(len(rows[0]))]

    return step


def per_sample_reduce(model: nn.Module, x: Tensor, reduce: Callable[[dict[str, Tensor]], Tensor], **kwargs) -> Tensor:
    """``reduce`` every chunk's gradients to per-sample values and concatenate them.

    ``reduce`` gets a chunk's ``grads`` (see :func:`iter_per_sample_grads`, which takes the
    keyword arguments) and returns a tensor whose first dimension is the chunk's samples.
    The result stays on the model's device.
    """
    out = [reduce(grads).detach() for _, grads in iter_per_sample_grads(model, x, **kwargs)]
    if not out:
        raise ValueError("per_sample_reduce needs at least one sample.")
    return torch.cat(out)


def sum_of_squares(
    model: nn.Module,
    x: Tensor,
    *,
    loss_fn: LossFn | None = None,
    targets: Tensor | None = None,
    cotangents: Tensor | None = None,
    names: Sequence[str] | None = None,
    engine: str = "vmap",
    max_elements: int = MAX_ELEMENTS,
) -> dict[str, Tensor]:
    """``sum_i sum_k grad_ik**2`` for every chosen parameter (shaped like it).

    Arguments as for :func:`iter_per_sample_grads`.  With ``cotangents`` this is the squared
    vector-Jacobian products summed over samples and cotangents (the Fisher's sum); the
    cotangents' gradients are squared one by one, never stacked.
    """
    out: dict[str, Tensor] = {}
    for _, parts in _chunks(model, x, loss_fn, targets, cotangents, names, engine, max_elements):
        for grads in parts:
            for n, g in grads.items():
                s = g.square().sum(0)
                out[n] = out[n] + s if n in out else s
    if not out:  # an empty batch
        out = {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in _chosen(model, names).items()}
    return out


# --------------------------------------------------------------------------
# per-sample reductions (for per_sample_reduce)
# --------------------------------------------------------------------------


def grad_norms(grads: dict[str, Tensor]) -> Tensor:
    """Per-sample L2 norm of the gradients over all parameters (and objectives)."""
    return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))


def grad_dots(direction: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
    """A reduction: per-sample ``<grad_i, direction>`` for scalar objectives (``loss_fn``).

    ``direction`` is flat over the chosen parameters, in order (the layout of
    :func:`~.params.flatten`).
    """

    def dot(grads: dict[str, Tensor]) -> Tensor:
        flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
        return flat @ direction.to(device=flat.device, dtype=flat.dtype)

    return dot
