"""Fisher forgetting (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net").

``fisher_forget(model, remain_loader, forget_loader, alpha=..., shaping=...)``
    Returns a copy of the model with Fisher noise added (and, optionally, a
    diagonal Newton step that removes the forget set first).  ``shaping``
    selects the noise: ``"golatkar"`` (the published recipe, see
    :func:`noise_variance`), ``"plain"`` (variance ``alpha * clamp(1/F, max=1e3)``),
    ``"paper"`` (the paper's authors' code: std ``alpha * (F + eps)^(-1/4)``) or
    ``"paper_lambda"`` (std ``(lam * sigma_h^2)^(1/4) * (F + eps)^(-1/4)``); see
    :func:`noise_std`.  ``per_batch=True`` repeats the whole step (Fisher at
    the current weights, Newton step, noise) once per forget batch, as the
    paper's Table 2 does.

The curvature it shapes the noise with, the diagonal Fisher on the remain set
(per-sample true, per-sample empirical, or batch-mean), comes from
:func:`healing_pl.gradients.fisher.diagonal_fisher`.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from healing_pl.gradients.fisher import diagonal_fisher_and_count, split_batch
from healing_pl.gradients.params import (
    add_,
    all_finite,
    clip_by_global_norm,
    eval_mode,
    to_model,
    trainable_named_parameters,
)
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner

__all__ = ["NOISE_FORMS", "SHAPINGS", "fisher_forget", "noise_std", "noise_variance"]

#: Noise-variance recipes of :func:`noise_variance`.
SHAPINGS = ("golatkar", "plain")
#: Every noise form of :func:`noise_std`: the variance recipes and the paper's standard deviations.
NOISE_FORMS = (*SHAPINGS, "paper", "paper_lambda")

#: Clamps of the inverse Fisher: every parameter, and (golatkar) the classifier layer.
_VAR_CLAMP = 1e3
_VAR_CLAMP_CLASSIFIER = 1e2
#: Golatkar's extra factor for the classifier layer and the 1-D parameters (BatchNorm, biases).
_VAR_BOOST = 10.0


# --------------------------------------------------------------------------
# forgetting
# --------------------------------------------------------------------------


def noise_variance(fisher: Tensor, alpha: float, shaping: str = "golatkar", num_classes: int | None = None) -> Tensor:
    """The variance of the Fisher noise of one parameter, from its diagonal Fisher ``fisher``.

    ``plain``::

        var = alpha * clamp(1 / (F + 1e-8), max=1e3)

    ``golatkar``: the shaping of Golatkar et al.'s public code ("Eternal
    Sunshine of the Spotless Net", CVPR 2020; repository
    AdityaGolatkar/SelectiveForgetting, main.ipynb, ``get_mean_var``), in its
    order of operations::

        var = clamp(1 / (F + 1e-8), max=1e3)
        var = clamp(var, max=1e2)                 if F.shape[0] == num_classes  (classifier layer)
        var = alpha * var
        var = var.mean(dim=1, keepdim=True)       if F.ndim > 1, broadcast back to F's shape
        var = 10 * var                            if F.shape[0] == num_classes or F.ndim == 1

    The mean runs over dimension 1 only: over the inputs of each output row
    of a Linear weight, over the input channels at each kernel position of a
    Conv2d weight.  As in the published code, "classifier layer" means any
    parameter whose first dimension equals the number of classes (the head's
    weight and bias, but also e.g. a convolution with that many output
    channels), and 1-D parameters are BatchNorm/LayerNorm weights and biases.
    The published code's class-forgetting branch (zeroing the forgotten
    class's row) does not apply: it forgets samples, not a class.

    Args:
        fisher: the diagonal Fisher of one parameter (its shape).
        alpha: noise strength (>= 0).
        shaping: ``"golatkar"`` or ``"plain"``.
        num_classes: the classifier's number of classes (``golatkar`` only;
            None: no parameter counts as the classifier layer).

    Returns:
        The variance, a new tensor of ``fisher``'s shape and dtype.
    """
    if shaping not in SHAPINGS:
        raise ValueError(f"shaping must be one of {SHAPINGS}, got {shaping!r}.")
    var = torch.clamp(1.0 / (fisher + 1e-8), max=_VAR_CLAMP)
    if shaping == "plain":
        return alpha * var
    classifier = num_classes is not None and fisher.dim() >= 1 and fisher.shape[0] == num_classes
    if classifier:
        var = torch.clamp(var, max=_VAR_CLAMP_CLASSIFIER)
    var = alpha * var
    if fisher.dim() > 1:
        var = var.mean(dim=1, keepdim=True).expand_as(fisher).clone()
    if classifier or fisher.dim() == 1:
        var = var * _VAR_BOOST
    return var


def noise_std(
    fisher: Tensor,
    alpha: float,
    shaping: str = "golatkar",
    num_classes: int | None = None,
    *,
    eps: float = 1e-6,
    lam: float = 1e-3,
    sigma_h: float | None = None,
) -> Tensor:
    """The standard deviation of the Fisher noise of one parameter, from its diagonal Fisher ``fisher``.

    ``golatkar`` and ``plain``: ``sqrt(noise_variance(fisher, alpha, shaping, num_classes))``.
    ``paper`` (the paper's authors' code)::

        std = alpha * (F + eps)^(-1/4)

    ``paper_lambda`` (the form of the optimal noise of Golatkar et al., covariance
    ``sqrt(lam sigma_h^2) F^(-1/2)``)::

        std = (lam * sigma_h^2)^(1/4) * (F + eps)^(-1/4)          sigma_h = alpha unless given

    (``eps = 0`` gives the bare ``F^(-1/4)``, infinite where the Fisher is zero.)

    Args:
        fisher: the diagonal Fisher of one parameter (its shape).
        alpha: noise strength (>= 0).
        shaping: one of :data:`NOISE_FORMS`.
        num_classes: marks the classifier layer (``golatkar`` only).
        eps: added to the Fisher before the power (``paper`` forms only).
        lam: the lambda of ``paper_lambda``.
        sigma_h: the sigma_h of ``paper_lambda`` (None: ``alpha``).

    Returns:
        A new tensor of ``fisher``'s shape and dtype.
    """
    if shaping not in NOISE_FORMS:
        raise ValueError(f"shaping must be one of {NOISE_FORMS}, got {shaping!r}.")
    if shaping in SHAPINGS:
        return noise_variance(fisher, alpha, shaping, num_classes).sqrt()
    root = (fisher + eps).pow(-0.25)
    if shaping == "paper":
        return alpha * root
    sigma = alpha if sigma_h is None else sigma_h
    return (lam * sigma**2) ** 0.25 * root


def _num_classes(model: nn.Module, loader) -> int:
    """The width of the model's logits on the first batch of ``loader``."""
    for batch in loader:
        x, _ = to_model(split_batch(batch), model)
        with eval_mode(model), torch.no_grad():
            return int(model(x[:1]).shape[-1])
    raise ValueError("the loader yielded no samples, so the Fisher is undefined.")


def _forget_gradient_sum(model: nn.Module, loader, progress: bool) -> tuple[list[Tensor], int]:
    """``sum_{f in F} grad CE(f)`` over the trainable parameters, and ``|F|``."""
    params = [p for _, p in trainable_named_parameters(model)]
    total = [torch.zeros_like(p) for p in params]
    count = 0
    with eval_mode(model):
        for batch in tqdm(loader, desc="forget gradient", disable=not progress, leave=False):
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("the Newton step needs labels: the forget loader must yield (x, y) batches.")
            x, y = to_model((x, y), model)
            loss = F.cross_entropy(model(x), y, reduction="sum")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t += g
            count += x.shape[0]
    return total, count


def fisher_forget(
    model: nn.Module,
    remain_loader,
    forget_loader=None,
    *,
    alpha: float,
    kind: str = "true",
    lam: float = 1e-3,
    noise_only: bool = True,
    shaping: str = "golatkar",
    num_classes: int | None = None,
    max_norm: float | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    sigma_h: float | None = None,
    per_batch: bool = False,
    progress: bool = False,
    start_fisher: tuple[dict[str, Tensor], int] | None = None,
) -> nn.Module:
    """Fisher forgetting: a copy of ``model`` with the forget set's information scrubbed.

    With ``F_R`` the diagonal Fisher of the model on the remain set
    (:func:`~healing_pl.gradients.fisher.diagonal_fisher`, ``kind``), every trainable parameter ``theta``
    becomes::

        theta + delta_newton + sqrt(var) * N(0, 1)
        var = noise_variance(F_R, alpha, shaping, num_classes)

    ``shaping="plain"`` is ``var = alpha * clamp(1 / (F_R + 1e-8), max=1e3)``
    (clamp first, then scale); ``shaping="golatkar"`` (the default) adds the
    published code's shaping (classifier clamp 1e2, variance averaged over
    dimension 1, x10 for the classifier layer and 1-D parameters; see
    :func:`noise_variance`), which makes the same alpha stronger: the
    averaging spreads the large variances of rarely used weights over their
    whole row, so alpha must be calibrated per shaping
    (docs/conventions.md).

    ``noise_only=True`` (the default, the form Golatkar et al. use for deep
    networks) sets ``delta_newton = 0``.  ``noise_only=False`` adds the
    diagonal Newton step that removes the forget set F from the training
    objective::

        delta_newton = (F_R + lam)^-1 * (1/|R|) * sum_{f in F} grad CE(f)

    Derivation: at the optimum of the mean loss over D = R + F the gradients
    cancel, ``sum_R grad = -sum_F grad``, so the gradient of the remain
    objective ``L_R = 1/|R| sum_R CE`` is ``-(1/|R|) sum_F grad`` and one
    Newton step on ``L_R`` moves theta by ``+H_R^-1 (1/|R|) sum_F grad``
    (equivalently ``(|F|/|R|) * H_R^-1 * mean forget gradient``).  ``H_R`` is
    approximated by the diagonal Fisher ``F_R`` (the Gauss-Newton curvature of
    the cross-entropy), and ``lam`` keeps its inverse bounded.  The forget
    gradient is taken at the original parameters; ``forget_loader``'s batch
    size (the paper's batch_f) only sets how many forget samples share one
    backward pass, the step is the same for any batch size.  This is the
    "Newton step plus noise" form whose damping lam and batch_f the paper's
    Tables 2 and 6 list; the noise is added after the step.

    ``per_batch=True`` takes that whole step once per batch ``B`` of
    ``forget_loader`` (the paper's deletion batch batch_f), one after
    another: the Fisher ``F_R`` at the current weights, the Newton step with
    ``sum_{f in B} grad CE(f)`` at the current weights (unless
    ``noise_only``), then fresh noise::

        for B in forget batches:
            theta <- theta + clip((F_R(theta) + lam)^-1 (1/|R|) sum_B grad(theta) + std(F_R(theta)) * N(0, 1))

    With one forget batch it is the single step above.

    Args:
        model: the trained classifier (left untouched).
        remain_loader: ``(x, y)`` batches of the remain set R.
        forget_loader: ``(x, y)`` batches of the forget set F (needed only when
            ``noise_only=False``).
        alpha: noise strength (>= 0).  It needs calibration: on a small MNIST
            CNN, 1e-6 kept ~96% accuracy while 1e-4 collapsed it to chance.
        kind: ``"true"`` or ``"empirical"`` (per-sample) or ``"batch_mean"``
            Fisher (the remain loader's batches; see
            :func:`~healing_pl.gradients.fisher.diagonal_fisher`).
        lam: damping added to ``F_R`` in the Newton step (and the lambda of
            ``shaping="paper_lambda"``).
        noise_only: skip the Newton step.
        shaping: ``"golatkar"`` (published recipe), ``"plain"``, ``"paper"``
            or ``"paper_lambda"`` (see :func:`noise_std`).
        num_classes: the number of classes, which marks the classifier layer
            for ``shaping="golatkar"`` (None: the width of the model's logits
            on the first remain batch).
        max_norm: if set, the whole update (Newton step plus noise) is scaled
            down so that its L2 norm over all parameters is at most this.
        seed: seed of the noise (a ``torch.Generator`` on the CPU, so the same
            seed gives the same noise on any device; one generator for the
            whole call, parameters drawn in ``model.parameters()`` order).
        eps: added to the Fisher in the ``paper`` noise forms.
        sigma_h: sigma_h of ``shaping="paper_lambda"`` (None: ``alpha``).
        per_batch: one step (Fisher, Newton step, noise) per forget batch.
        progress: show progress bars.
        start_fisher: ``diagonal_fisher_and_count(model, remain_loader, kind)`` when the caller has it (the
            repeats of one start share it): used for the first round instead of computing it again.

    Returns:
        A new model (deep copy) with the updated parameters.

    Raises:
        ValueError: when the Newton step is not finite (lam too small) or
            the updated parameters are not finite (alpha too large).
    """
    if not alpha >= 0:  # also catches NaN
        raise ValueError(f"alpha must be a non-negative number, got {alpha}.")
    if not noise_only and forget_loader is None:
        raise ValueError("the Newton step (noise_only=False) needs a forget_loader.")
    if per_batch and forget_loader is None:
        raise ValueError("the step per forget batch (per_batch=True) needs a forget_loader.")
    if shaping not in NOISE_FORMS:
        raise ValueError(f"shaping must be one of {NOISE_FORMS}, got {shaping!r}.")
    if not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps}.")
    new = copy.deepcopy(model)
    if shaping == "golatkar" and num_classes is None:
        num_classes = _num_classes(new, remain_loader)
    named = trainable_named_parameters(new)
    params = [p for _, p in named]
    gen = torch.Generator().manual_seed(int(seed))
    rounds = ([b] for b in forget_loader) if per_batch else [forget_loader]
    for i, forget in enumerate(rounds):
        if i == 0 and start_fisher is not None:  # the first round's model is the start: its Fisher, given
            fisher, n_remain = start_fisher
        else:
            fisher, n_remain = diagonal_fisher_and_count(
                new, remain_loader, kind, progress=progress, desc="Fisher (remain)"
            )
        if not all_finite(list(fisher.values())):
            raise ValueError("the Fisher on the remain set is not finite: the model's loss is not finite there.")
        fishers = [fisher[n] for n, _ in named]
        deltas = [torch.zeros_like(p) for p in params]
        if not noise_only:
            grad_sum, _ = _forget_gradient_sum(new, forget, progress)
            deltas = [g / n_remain / (f + lam) for g, f in zip(grad_sum, fishers, strict=True)]
            if not all_finite(deltas):
                raise ValueError("the Fisher Newton step is not finite: lam is too small.")
        with torch.no_grad():
            for d, p, f in zip(deltas, params, fishers, strict=True):
                std = noise_std(f, alpha, shaping, num_classes, eps=eps, lam=lam, sigma_h=sigma_h)
                noise_dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
                noise = torch.randn(p.shape, generator=gen, dtype=noise_dtype).to(device=p.device, dtype=p.dtype)
                d += std * noise
        deltas = clip_by_global_norm(deltas, max_norm)
        if not all_finite(deltas):
            raise ValueError("Fisher forgetting produced non-finite parameters: alpha is too large.")
        add_(params, deltas)
        if not all_finite(params):
            raise ValueError("Fisher forgetting produced non-finite parameters: alpha is too large.")
    return new


@UNLEARNERS.register
class Fisher(StochasticUnlearner):
    """Fisher forgetting (Golatkar et al. 2020).

    Noise shaped by the inverse diagonal Fisher of the remain set, optionally after a diagonal Newton step
    (:func:`fisher_forget`)."""

    name = "fisher"
    label = "Fisher"
    simulable = True
    strengths = {"alpha": (True, 1e-10, 1e-2)}

    def __init__(
        self,
        alpha: float = 1e-6,
        fisher_kind: Literal["true", "empirical", "batch_mean"] = "true",
        lam: float = 1e-3,
        noise_only: bool = True,
        shaping: Literal["golatkar", "plain", "paper", "paper_lambda"] = "golatkar",
        batch_r: int = 512,
        batch_f: int = 64,
        max_norm: float | None = None,
        eps: float = 1e-6,
        sigma_h: float | None = None,
        per_batch: bool = False,
        **kwargs,
    ):
        """
        Args:
            alpha: noise strength; calibrate it per shaping (golatkar needs a smaller alpha than plain for the
                same drop; docs/conventions.md).
            fisher_kind: the Fisher estimator: true (per sample, expectation over the model's predicted labels),
                empirical (per sample, the dataset's labels) or batch_mean (the squared gradient of each remain
                batch's mean loss, averaged over the batches of size batch_r).
            lam: damping of the Newton step (noise_only false): theta moves by (F_R + lam)^-1 (1/|R|) sum_F grad
                before the noise (the paper's lambda, 1e-6 on MNIST); also the lambda of shaping paper_lambda.
            noise_only: noise only (Golatkar's form for deep networks) or the diagonal Newton step plus noise
                (the form whose lam and batch_f the paper's Tables 2 and 6 list).
            shaping: noise form: golatkar (variance from Golatkar et al.'s published recipe: inverse Fisher
                clamped at 1e3, 1e2 for the classifier layer, averaged over each output row, x10 for the classifier
                layer and 1-D parameters), plain (variance alpha * clamp(1/F, max=1e3)), paper (the paper's authors'
                code: std alpha * (F + eps)^(-1/4), their alpha 3.5e-3 on MNIST) or paper_lambda (std
                (lam * sigma_h^2)^(1/4) * (F + eps)^(-1/4)).
            batch_r: batch size over the remain set (the Fisher information; the batch of batch_mean).
            batch_f: forget-set minibatch of the Newton step (the paper's deletion batch with per_batch).
            max_norm: clip the L2 norm of the update (None: no clip).
            eps: added to the Fisher before the power in the paper noise forms.
            sigma_h: sigma_h of shaping paper_lambda (None: alpha).
            per_batch: one step (Fisher at the current weights, Newton step unless noise_only, fresh noise) per
                forget minibatch of batch_f, one after another (the paper's Table 2).
        """
        super().__init__(**kwargs)
        self._at_least({"batch_r": batch_r, "batch_f": batch_f}, 1)
        self._one_of("fisher_kind", fisher_kind, ("true", "empirical", "batch_mean"))
        self._one_of("shaping", shaping, NOISE_FORMS)
        self._non_negative({"alpha": alpha, "lam": lam, "eps": eps})
        self._positive({"max_norm": max_norm, "sigma_h": sigma_h})
        self.eps, self.sigma_h, self.per_batch = eps, sigma_h, per_batch
        self.alpha, self.fisher_kind, self.lam, self.noise_only, self.shaping = (
            alpha,
            fisher_kind,
            lam,
            noise_only,
            shaping,
        )
        self.batch_r, self.batch_f, self.max_norm = batch_r, batch_f, max_norm

    def divergence_hint(self) -> str:
        return f"lower --unlearn.alpha (now {self.alpha:g})"

    def run(self, model, datamodule, forget_ids, context, seed):
        remain = datamodule.remain_ids(forget_ids)
        remain_loader = datamodule.loader(remain, batch_size=self.batch_r)
        start_fisher = None
        if context.shared is not None:  # the repeats of one start share its Fisher (only the noise differs)

            def compute():
                return diagonal_fisher_and_count(
                    model, remain_loader, self.fisher_kind, progress=context.progress, desc="Fisher (remain)"
                )

            start_fisher = context.shared.get(("fisher", self.fisher_kind, self.batch_r), compute)
        out = fisher_forget(
            model,
            remain_loader,
            datamodule.loader(forget_ids, batch_size=self.batch_f),
            alpha=self.alpha,
            kind=self.fisher_kind,
            lam=self.lam,
            noise_only=self.noise_only,
            shaping=self.shaping,
            num_classes=datamodule.num_classes,
            max_norm=self.max_norm,
            seed=seed,
            eps=self.eps,
            sigma_h=self.sigma_h,
            per_batch=self.per_batch,
            progress=context.progress,
            start_fisher=start_fisher,
        )
        return out, {}
