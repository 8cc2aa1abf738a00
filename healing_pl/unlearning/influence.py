"""Influence-function unlearning (Koh & Liang 2017) with the LiSSA inverse-HVP.

``influence_unlearn(model, loss_fn, remain_loader, forget_loader, n_train=n, removal=..., ...)``
    removes the forget set in one Newton-like step per forget batch ``B``;
    the influences of the removed points add up::

        theta <- theta + c(B) (H_R + d I)^-1 sum_{z in B} grad loss(z, theta)

        removal="mean":  c(B) = 1/n      Koh & Liang's influence (1/n): the Newton step
                                         on the mean remain loss
        removal="sum":   c(B) = 1        the unscaled sum
        removal="batch": c(B) = 1/|B|    H^-1 times the forget batch's *mean* gradient,
                                         applied after each batch

    with ``H_R`` the Hessian of the mean loss on the remain set (estimated by
    LiSSA at the current parameters) and the forget gradient recomputed at
    the current parameters for every forget batch.  With one forget batch
    (``batch_f >= |F|``) "mean" and "sum" are single updates; "batch" then
    equals "sum" divided by ``|F|``.

    ``step="fixed"`` (the paper's own step) keeps only the direction and moves
    the weights by exactly ``max_norm`` per forget batch::

        u     = (H_R + d I)^-1 sum_{z in B} grad loss(z, theta)
        theta <- theta + max_norm * u / |u|

    In the authors' experiment code the forget gradient passes through a
    mixed-precision gradient scaler (x2^16) that is never divided out and the
    update is then clipped to ``max_norm``, so every step has length
    ``max_norm``; this is that intent, implemented directly and with the
    flattened vector aligned with the parameters (their code flattens the
    gradients in sorted-name order).  The removal scaling does not matter
    then (a positive factor does not change a direction).

The inverse-HVP ``(H_R + d I)^-1 g`` is :func:`healing_pl.gradients.lissa.lissa_inverse_hvp`
(its recursion, damping conventions and convergence condition are described there).
Loss functions have the signature ``loss_fn(model, batch) -> scalar``: the
*mean* loss over the samples of the batch (e.g.
:func:`healing_pl.gradients.lissa.cross_entropy_loss`).  Any regulariser in it
counts as part of every sample's loss.

The model runs in eval mode (BatchNorm statistics are neither used per batch
nor updated, dropout is off) and every module's flag is restored.  Batches are
moved to the model's device and floating dtype (a float64 model gets float64
inputs from a float32 loader; labels stay integer) and every vector lives
there too.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from healing_pl.gradients.lissa import check_lissa_knobs, lissa_inverse_hvp
from healing_pl.gradients.params import (
    add_,
    all_finite,
    batch_size,
    clip_by_global_norm,
    eval_mode,
    flatten,
    to_model,
    trainable_parameters,
    unflatten,
)
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner

__all__ = ["REMOVALS", "STEPS", "influence_unlearn"]

#: How the forget gradient is scaled (see :func:`influence_unlearn`).
REMOVALS = ("mean", "sum", "batch")
#: How long each forget batch's update is: the Newton step itself, or exactly ``max_norm`` along it.
STEPS = ("newton", "fixed")


def influence_unlearn(
    model: nn.Module,
    loss_fn,
    remain_loader,
    forget_loader,
    *,
    n_train: int,
    damping: float,
    scale: float,
    depth: int,
    repeats: int = 1,
    max_norm: float | None = None,
    removal: str = "mean",
    damping_convention: str = "additive",
    step: str = "newton",
    progress: bool = False,
) -> nn.Module:
    """Koh & Liang influence removal of the forget set, one update per forget batch.

    For each batch ``B_f`` of ``forget_loader``, at the current parameters::

        g     = sum_{z in B_f} grad loss(z)        (= |B_f| * grad loss_fn(model, B_f))
        delta = c * (H_R + damping I)^-1 g         (LiSSA on remain_loader)
        theta = theta + clip(delta, max_norm)                 step="newton"
        theta = theta + max_norm * delta / |delta|            step="fixed"

    with ``c`` set by ``removal``:

    * ``"mean"``: ``c = 1 / n_train``, Koh & Liang's influence
      ``-(1/n) H^-1 grad``.  ``n_train`` is the size of the training set the
      model was fit on.  Since ``H_R`` is the Hessian of the *mean* remain
      loss, ``n_train = |R|`` makes one batch's update exactly the Newton step
      on the remain objective (at an optimum of the full objective); ``|D|``
      gives the slightly shorter step of the original paper.
    * ``"sum"``: ``c = 1``, the unscaled sum ``H^-1 sum grad`` (the Newton
      step of a *summed* loss, here applied with the Hessian of the mean
      loss: ``n_train`` times the "mean" step).
    * ``"batch"``: ``c = 1 / |B_f|``: ``H^-1`` times the batch's *mean*
      gradient, applied after each forget batch, ``n_train / |B_f|`` times
      the "mean" step.  This is the convention of public influence-unlearning
      code built around the paper's knobs (batch_r, batch_f, max norm, LiSSA
      depth and scale, ``(1 - d)`` damping): its ``iterative_influence_unlearn``
      splits the deletion set into mini-batches of ``deletion_batch_size``,
      takes each batch's average gradient ``(1/|D_u^i|) sum grad``, solves
      ``v ~ H^-1 Delta_u`` by LiSSA on the remaining data, clips ``v`` to
      ``max_norm`` and sets ``theta <- theta + v``; the sequential mini-batch
      deletion follows Mahadevan & Mathioudakis 2021 (the paper's [29]).
      See docs/conventions.md.

    ``damping_convention`` (see :func:`~healing_pl.gradients.lissa.lissa_inverse_hvp`): ``"additive"``
    inverts ``H_R + damping I``, ``"koh_liang"`` ``H_R + damping * scale * I``.

    Args:
        model: the trained model (left untouched).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        remain_loader: batches of the remain set R (the Hessian's data).
        forget_loader: batches of the forget set F, removed one after another.
        n_train: training set size (> 0).
        damping, scale, depth, repeats: LiSSA knobs (see :func:`~healing_pl.gradients.lissa.lissa_inverse_hvp`).
        max_norm: if set, each batch's update is scaled down to at most this
            L2 norm (``step="newton"``); the exact length of each batch's
            update (``step="fixed"``, where it is required).
        removal: ``"mean"``, ``"sum"`` or ``"batch"`` (the scaling ``c`` above).
        damping_convention: ``"additive"`` or ``"koh_liang"``.
        step: ``"newton"`` (the scaled step above, clipped) or ``"fixed"``
            (length ``max_norm`` along the LiSSA direction; as in the authors'
            code, a LiSSA iterate that grows, because ``scale`` is below half
            the Hessian's top eigenvalue, still gives the direction, which then
            leans toward the top eigenvectors; only a non-finite one stops).
        progress: show progress bars.

    Returns:
        A new model (deep copy) with the updated parameters.

    Raises:
        ValueError: when LiSSA diverges or the update is not finite; the
            input model is unchanged either way.
    """
    if not n_train > 0:
        raise ValueError(f"n_train must be > 0, got {n_train}.")
    if removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}.")
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}.")
    if step == "fixed" and not (max_norm is not None and max_norm > 0):
        raise ValueError(f"the fixed step needs max_norm > 0 (the length of each forget batch's step), got {max_norm}.")
    check_lissa_knobs(damping, scale, depth, repeats, damping_convention)
    new = copy.deepcopy(model)
    params = trainable_parameters(new)
    for batch in tqdm(forget_loader, desc="influence (forget batches)", disable=not progress, leave=False):
        batch = to_model(batch, new)
        size = batch_size(batch)
        with eval_mode(new):
            loss = loss_fn(new, batch) * size
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = flatten([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads, strict=True)])
        u = lissa_inverse_hvp(
            new,
            loss_fn,
            remain_loader,
            g,
            damping=damping,
            scale=scale,
            depth=depth,
            repeats=repeats,
            damping_convention=damping_convention,
            progress=progress,
            bounded=step != "fixed",  # the fixed step uses the direction alone, as the authors' code
        )
        if step == "fixed":
            norm = u.norm()
            if not (torch.isfinite(norm) and norm > 0):
                raise ValueError("the influence direction is zero or not finite, so it has no fixed-length step.")
            deltas = unflatten(u * (max_norm / norm), params)
        else:
            if removal == "mean":
                u = u / n_train
            elif removal == "batch":
                u = u / size
            deltas = clip_by_global_norm(unflatten(u, params), max_norm)
        if not all_finite(deltas):
            raise ValueError("the influence update is not finite: raise scale or damping.")
        add_(params, deltas)
    return new


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


@UNLEARNERS.register
class Influence(StochasticUnlearner):
    """Influence unlearning (Koh & Liang 2017) with LiSSA.

    A Newton step along the LiSSA inverse-Hessian-vector product of the forget gradient, one forget minibatch
    after another (:func:`influence_unlearn`); with step fixed, a step of length max_norm along it per minibatch
    (the paper's own step)."""

    name = "influence"
    label = "Influence"
    simulable = True
    strengths = {"scale": (False, 1.0, 1e6), "damping": (False, 1e-6, 1e2)}

    def __init__(
        self,
        damping: float = 0.01,
        damping_convention: Literal["additive", "koh_liang"] = "additive",
        scale: float = 100.0,
        depth: int = 100,
        lissa_repeats: int = 1,
        removal: Literal["mean", "sum", "batch"] = "mean",
        batch_r: int = 512,
        batch_f: int = 64,
        max_norm: float | None = None,
        step: Literal["newton", "fixed"] = "newton",
        **kwargs,
    ):
        """
        Args:
            damping: LiSSA damping d (see damping_convention).
            damping_convention: additive (h <- v + h - (H + d I) h / s: inverts H + d I) or koh_liang
                (h <- v + (1 - d) h - H h / s as in Koh & Liang's code: inverts H + d s I, so the paper's
                d = 1e-6 at s = 1000 is an additive 1e-3).
            scale: LiSSA scale s: must exceed half the largest eigenvalue of the damped Hessian.
            depth: LiSSA recursion depth.
            lissa_repeats: LiSSA estimates averaged per inverse-Hessian-vector product.
            removal: how the forget gradient of each forget batch B (batch_f) is scaled: mean (Koh & Liang:
                theta + (1/n) H^-1 sum_B grad, n the training set size), sum (theta + H^-1 sum_B grad) or batch
                (theta + H^-1 mean_B grad after each batch, as public influence-unlearning code does).
            batch_r: batch size over the remain set (Hessian-vector products; the paper's batch_r, 2048 in its
                Table 3).
            batch_f: forget-set minibatch (the paper's deletion batch, 1024 or 2048 in its Table 3): the forget set
                is removed in sequential minibatches of this size.
            max_norm: clip the L2 norm of each update (None: no clip); with step fixed, the exact length of each
                minibatch's update (required).
            step: newton (the removal-scaled Newton step, clipped to max_norm) or fixed (the paper's own step:
                each forget minibatch moves the weights by exactly max_norm along (H_R + d I)^-1 sum_B grad, what
                the authors' never-divided gradient scaler followed by the clip does).
        """
        super().__init__(**kwargs)
        self._at_least({"batch_r": batch_r, "batch_f": batch_f, "depth": depth, "lissa_repeats": lissa_repeats}, 1)
        self._one_of("damping_convention", damping_convention, ("additive", "koh_liang"))
        self._one_of("removal", removal, ("mean", "sum", "batch"))
        self._non_negative({"damping": damping})
        self._positive({"scale": scale, "max_norm": max_norm})
        self._one_of("step", step, ("newton", "fixed"))
        if step == "fixed" and max_norm is None:
            raise ValueError("unlearn.step fixed needs unlearn.max_norm, the length of each forget minibatch's step.")
        self.step = step
        self.damping, self.damping_convention, self.scale, self.depth = damping, damping_convention, scale, depth
        self.lissa_repeats, self.removal = lissa_repeats, removal
        self.batch_r, self.batch_f, self.max_norm = batch_r, batch_f, max_norm

    def divergence_hint(self) -> str:
        return f"raise --unlearn.scale (now {self.scale:g}) or --unlearn.damping (now {self.damping:g})"

    def run(self, model, datamodule, forget_ids, context, seed):
        remain = datamodule.remain_ids(forget_ids)
        # the Hessian batches are drawn in a seeded shuffled order: repeats differ, reruns do not
        out = influence_unlearn(
            model,
            _loss,
            datamodule.loader(remain, shuffle=True, batch_size=self.batch_r, seed=seed),
            datamodule.loader(forget_ids, batch_size=self.batch_f),
            n_train=len(datamodule.primary_ids),
            damping=self.damping,
            scale=self.scale,
            depth=self.depth,
            repeats=self.lissa_repeats,
            max_norm=self.max_norm,
            removal=self.removal,
            damping_convention=self.damping_convention,
            step=self.step,
            progress=context.progress,
        )
        return out, {}
