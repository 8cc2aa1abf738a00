"""Hessian-vector products and the LiSSA inverse-HVP: the curvature of influence unlearning.

``lissa_inverse_hvp(model, loss_fn, loader, v, damping=d, scale=s, depth=J)``
    approximates ``(H + d I)^-1 v`` without forming the Hessian ``H`` of the
    mean loss over the loader's data.  The recursion (public code disagrees
    on what "damping" means; ``damping_convention`` picks one)::

        h_0 = v
        additive:  h_j = v + h_{j-1} - (H_j h_{j-1} + d h_{j-1}) / s      j = 1..J
        koh_liang: h_j = v + (1 - d) h_{j-1} - H_j h_{j-1} / s
        result = h_J / s          (averaged over ``repeats`` independent runs)

    ``koh_liang`` is the form of Koh & Liang's code (and of the LiSSA of the
    public influence-unlearning code, see :mod:`healing_pl.unlearning.influence`); its fixed point is
    ``(H + d s I)^-1 v``, so its ``d`` at scale ``s`` is an additive ``d * s``
    (the paper's d = 1e-6 at s = 1000 is an additive 1e-3).  Below, "d" is
    the effective additive damping.

    where ``H_j`` is the Hessian of the loss on the j-th batch drawn from the
    loader (cycled as needed).  With ``A = H + d I`` the fixed point is
    ``h = s A^-1 v``, so ``h_J / s -> A^-1 v``; the error shrinks like
    ``(1 - lambda_min(A)/s)^J``.  The recursion converges when every
    eigenvalue of ``A / s`` lies in ``(0, 2)``: ``s`` must exceed half the
    largest eigenvalue of ``A`` and ``d`` must cover the negative curvature
    of a non-convex loss.  Hessian-vector products use double backward
    (``torch.autograd.grad`` with ``create_graph=True``); no Hessian is formed.
    When consecutive batches hold the same data (a full-batch or one-batch
    loader), the gradient graph of the first is reused, which skips the
    forward and first backward pass of every later step.

``hessian_vector_product(model, loss_fn, batch, v)``
    one ``H v`` for the Hessian of one batch's loss (double backward), the
    part of a LiSSA step that is not vector arithmetic.

Loss functions have the signature ``loss_fn(model, batch) -> scalar``: the
*mean* loss over the samples of the batch (e.g. :func:`cross_entropy_loss`).
Any regulariser in it counts as part of every sample's loss.

LiSSA runs the model in eval mode (BatchNorm statistics are neither used per
batch nor updated, dropout is off) and restores every module's flag.
Batches are moved to the model's device and floating dtype (a float64 model
gets float64 inputs from a float32 loader; labels stay integer) and every
vector lives there too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .params import all_finite, cycle, eval_mode, flatten, to_model, trainable_parameters, unflatten

__all__ = [
    "DAMPING_CONVENTIONS",
    "check_lissa_knobs",
    "cross_entropy_loss",
    "hessian_vector_product",
    "lissa_inverse_hvp",
]

#: How LiSSA damps (see :func:`lissa_inverse_hvp`).
DAMPING_CONVENTIONS = ("additive", "koh_liang")

#: Divergence rule of LiSSA.  When every batch Hessian satisfies the
#: convergence condition, each step ``h -> v + (I - A_j/s) h`` maps ``h`` with
#: an operator of norm at most 1, so ``|h_j| <= (j + 1) |v|``.  A norm above
#: ``_GROWTH_LIMIT`` times that bound can only come from steps that expand,
#: i.e. from geometric growth: the recursion is diverging.
_GROWTH_LIMIT = 100.0


def cross_entropy_loss(model: nn.Module, batch) -> Tensor:
    """Mean cross-entropy of ``model`` on an ``(x, y)`` batch."""
    x, y = batch[0], batch[1]
    return F.cross_entropy(model(x), y)


def hessian_vector_product(model: nn.Module, loss_fn, batch, vector: Tensor) -> Tensor:
    """Flat ``H v`` for the Hessian of ``loss_fn(model, batch)`` (double backward).

    ``vector`` and the result are flat over the model's trainable parameters;
    both and the batch are moved to the model's device and floating dtype.
    The model is not put in eval mode here and nothing is written to ``.grad``.
    """
    params = trainable_parameters(model)
    if params:
        vector = vector.to(device=params[0].device, dtype=params[0].dtype)
    return flatten(_hvp(model, params, loss_fn, to_model(batch, model), unflatten(vector, params)))


def _hvp(model: nn.Module, params: list[Tensor], loss_fn, batch, vec: list[Tensor]) -> list[Tensor]:
    return _GradientGraph(model, params, loss_fn, batch).hvp(vec)


class _GradientGraph:
    """The gradient of one batch's loss, kept with its graph for repeated HVPs.

    ``hvp(v)`` differentiates ``<grad, v>`` once more (double backward).  The
    graph is retained, so consecutive LiSSA steps on the same batch (a
    full-batch or single-batch loader) skip the forward and first backward.
    """

    def __init__(self, model: nn.Module, params: list[Tensor], loss_fn, batch):
        self.params = params
        self.batch = batch
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        self.grads = [g if g is not None and g.requires_grad else None for g in grads]
        self.zero = torch.zeros((), device=loss.device, dtype=loss.dtype)

    def hvp(self, vec: list[Tensor]) -> list[Tensor]:
        terms = [(g * v).sum() for g, v in zip(self.grads, vec, strict=True) if g is not None]
        if not terms:  # the loss is at most linear in the parameters
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad(sum(terms, start=self.zero), self.params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv, strict=True)]

    def same_batch(self, batch) -> bool:
        """True when ``batch`` holds the same data (same objects, or equal tensors)."""
        return _same(self.batch, batch)


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b if isinstance(a, (int, float, str, type(None))) else False


def check_lissa_knobs(damping: float, scale: float, depth: int, repeats: int, convention: str = "additive") -> None:
    """Raise ``ValueError`` for a LiSSA knob outside its range (see :func:`lissa_inverse_hvp`)."""
    if convention not in DAMPING_CONVENTIONS:
        raise ValueError(f"damping_convention must be one of {DAMPING_CONVENTIONS}, got {convention!r}.")
    if not (damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite number >= 0, got {damping}.")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale}.")
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth}.")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats}.")


def lissa_inverse_hvp(
    model: nn.Module,
    loss_fn,
    loader,
    vector: Tensor,
    *,
    damping: float,
    scale: float,
    depth: int,
    repeats: int = 1,
    damping_convention: str = "additive",
    progress: bool = False,
    bounded: bool = True,
) -> Tensor:
    """LiSSA estimate of ``(H + damping I)^-1 vector`` (``additive``) or ``(H + damping*scale I)^-1 vector``.

    Args:
        model: the model; its trainable parameters (``requires_grad=True``,
            in ``model.parameters()`` order) are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        loader: batches whose mean loss defines ``H`` (cycled as needed; the
            batches are moved to the model's device and floating dtype).
            ``loss_fn`` must be deterministic given the batch: a batch equal
            to the previous one reuses its gradient graph.
        vector: flat tensor over the trainable parameters.
        damping: ``d`` in ``(H + d I)^-1`` (>= 0); with
            ``damping_convention="koh_liang"`` the recursion damps by
            ``(1 - d) h`` and inverts ``H + d * scale * I``.
        scale: ``s`` (> 0); must exceed half the largest eigenvalue of
            the damped Hessian.
        depth: number of recursion steps ``J`` per repeat (0 returns
            ``vector / scale``).
        repeats: independent runs (each continues through the loader),
            averaged.
        damping_convention: ``"additive"`` (``h - (H h + d h) / s``) or
            ``"koh_liang"`` (``(1 - d) h - H h / s``, Koh & Liang's code).
        progress: show a progress bar over the steps.
        bounded: stop when ``h`` grows past the bound below (the estimate is then meaningless as an inverse).
            False lets it grow, stopping only at non-finite values: for a caller that uses the *direction* of
            the result alone (the fixed-length Influence step normalises it), as the paper's authors' code did,
            which has no such check; a growing ``h`` then leans toward the top eigenvectors of ``H``.

    Returns:
        A flat tensor (detached) with the estimate.  The model's parameters,
        buffers, ``.grad`` and training flags are left as they were.

    Raises:
        ValueError: when the recursion diverges (non-finite values, or, if
            ``bounded``, the norm of ``h`` growing past ``100 (j + 1) |v|``):
            raise ``scale`` or ``damping``.
    """
    check_lissa_knobs(damping, scale, depth, repeats, damping_convention)
    params = trainable_parameters(model)
    n = sum(p.numel() for p in params)
    if vector.numel() != n:
        raise ValueError(f"vector has {vector.numel()} entries but the model has {n} trainable parameter entries.")
    if not params:
        return vector.detach().clone()
    v = vector.detach().reshape(-1).to(device=params[0].device, dtype=params[0].dtype)
    if not all_finite([v]):
        raise ValueError("the vector given to LiSSA is not finite.")
    v_norm = float(v.norm())
    batches = cycle(loader)
    total = torch.zeros_like(v)
    graph: _GradientGraph | None = None
    with eval_mode(model), tqdm(total=repeats * depth, desc="LiSSA", disable=not progress, leave=False) as bar:
        for _ in range(repeats):
            h = v.clone()
            for j in range(1, depth + 1):
                batch = to_model(next(batches), model)
                if graph is None or not graph.same_batch(batch):
                    graph = None  # free the previous graph first
                    graph = _GradientGraph(model, params, loss_fn, batch)
                hv = flatten(graph.hvp(unflatten(h, params))).detach()
                if damping_convention == "koh_liang":
                    h = v + (1 - damping) * h - hv / scale
                else:
                    h = v + h - (hv + damping * h) / scale
                norm = float(h.norm())
                if not math.isfinite(norm) or bounded and norm > _GROWTH_LIMIT * (j + 1) * v_norm:
                    raise ValueError(
                        f"LiSSA diverged at step {j} of {depth} (|h| = {norm:.3g}, |v| = {v_norm:.3g}): "
                        "raise scale (it must exceed half the largest eigenvalue of H + damping*I) "
                        "or damping (it must cover the negative curvature of the loss)."
                    )
                bar.update(1)
            total += h / scale
    del graph
    return total / repeats
