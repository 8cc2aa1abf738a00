"""The parameter-aware adversary: the training samples with the most leverage on the model.

Every computation on the model (per-sample gradients, the influence direction) runs on the model's device
and in its floating dtype; samples from the dataset are moved there (integer labels stay integer). The
per-sample gradients come from the shared engine :mod:`healing_pl.gradients.per_sample`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _generator, _lowest, check_choice
from healing_pl.adversary.selectors.surface import GlassBox, LossFn, _stack_samples
from healing_pl.gradients.params import flatten, to_model, trainable_parameters
from healing_pl.gradients.per_sample import grad_dots, grad_norms, per_sample_reduce

#: the rankings of :class:`GradientSelector`
MODES = ("grad_norm", "influence")
#: how per-sample gradients are computed
ENGINES = ("vmap", "loop")


def per_sample_grads_apply(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    reduce: Callable[[dict[str, Tensor]], Tensor],
    *,
    engine: str = "vmap",
    max_elements: int = 2**25,
) -> Tensor:
    """Compute every sample's loss gradient and ``reduce`` it to one number each.

    ``reduce`` gets a dict name -> gradient with a leading batch dimension and
    returns one value per sample.  The loss of one sample is
    ``loss_fn(model(x_i[None]), y_i[None])``; the gradients are over every
    trainable parameter.  ``engine="vmap"`` uses ``torch.func``
    (functional_call + vmap of a vjp), ``engine="loop"`` one backward pass per
    sample (often faster for small CNNs on few cores); both work on chunks
    whose gradients hold at most ``max_elements`` numbers.  A thin wrapper of
    :func:`healing_pl.gradients.per_sample.per_sample_reduce`: ``x`` and
    ``y`` are moved to the model's device and floating dtype, and the values
    stay there.  The caller sets the model's mode (eval, so batch norm and
    dropout behave per sample).
    """
    return per_sample_reduce(model, x, reduce, loss_fn=loss_fn, targets=y, engine=engine, max_elements=max_elements)


def per_sample_grad_norms(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, engine: str = "vmap") -> Tensor:
    """L2 norm of each sample's loss gradient over all trainable parameters."""
    return per_sample_grads_apply(model, loss_fn, x, y, grad_norms, engine=engine)


def check_lissa(damping: float, scale: float, depth: int, lissa_repeats: int) -> None:
    """Stop with one sentence when a LiSSA knob of the adversary is out of range."""
    if not (damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"adversary.damping must be a finite number >= 0, got {damping}.")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"adversary.scale must be a finite number > 0, got {scale}.")
    for knob, value, low in (("depth", depth, 0), ("lissa_repeats", lissa_repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"adversary.{knob} must be a whole number >= {low}, got {value!r}.")


@SELECTORS.register
class GradientSelector(Selector):
    """Parameter-aware: the training samples with the most leverage on the model.

    ``mode="grad_norm"``: largest per-sample gradient norm of the loss.

    ``mode="influence"``: largest predicted *increase of the validation loss
    when the sample is removed*, ``g_val^T (H + dI)^-1 g_i`` (Koh & Liang's
    ``I_up,loss = -g_val^T H^-1 g_i`` is the effect of *up-weighting*; removing
    a sample is up-weighting by ``-1/n``, so the samples whose removal hurts
    most are those with the most negative ``I_up,loss``, i.e. the most helpful
    ones).  ``g_val`` is the mean-loss gradient over the validation ids, H the
    Hessian of the training loss, applied with LiSSA
    (:func:`healing_pl.gradients.lissa.lissa_inverse_hvp`).

    Largest first; ties by lower id.  The model is put in eval mode while
    scoring and restored afterwards.
    """

    name = "gradient"
    label = "gradient"
    needs_system = "parameter_aware"
    needs_data = "known"

    def __init__(
        self,
        mode: Literal["grad_norm", "influence"] = "grad_norm",
        engine: Literal["vmap", "loop"] = "vmap",
        damping: float = 0.01,
        scale: float = 25.0,
        depth: int = 200,
        lissa_repeats: int = 1,
        **kwargs,
    ):
        """
        Args:
            mode: The ranking: grad_norm (per-sample loss gradient norm) or influence (predicted rise of
                the validation loss when the sample is removed, via LiSSA).
            engine: Per-sample gradients with torch.func vmap or a plain loop (often faster for small
                CNNs on a few CPU cores).
            damping: influence: LiSSA damping d in (H + d I)^-1.
            scale: influence: LiSSA scale s; must exceed half the largest eigenvalue of H + d I.
            depth: influence: LiSSA recursion depth.
            lissa_repeats: influence: LiSSA repeats averaged.
        """
        super().__init__(**kwargs)
        check_choice("mode", mode, MODES)
        check_choice("engine", engine, ENGINES)
        check_lissa(damping, scale, depth, lissa_repeats)
        self.mode = mode
        self.engine = engine
        self.damping = damping
        self.scale = scale
        self.depth = depth
        self.lissa_repeats = lissa_repeats

    def _choose(self, surface, budget):
        box = surface.glass_box
        model = box.model
        was_training = model.training
        model.eval()
        try:
            if self.mode == "grad_norm":
                scores = self._scores(box, surface.candidate_ids, grad_norms)
            else:
                direction = self._influence_direction(box)
                scores = self._scores(box, surface.candidate_ids, grad_dots(direction))
        finally:
            model.train(was_training)
        return _lowest(-scores.cpu(), surface.candidate_ids, budget)  # ranked with the (CPU) ids

    def _scores(self, box: GlassBox, ids: Tensor, reduce) -> Tensor:
        """One score per id, on the model's device and in its dtype."""
        out = []
        starts = range(0, len(ids), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"per-sample gradients ({self.mode})", leave=False)
        for start in starts:
            x, y = to_model(_stack_samples(box.dataset, ids[start : start + self.batch_size]), box.model)
            out.append(per_sample_grads_apply(box.model, box.loss_fn, x, y, reduce, engine=self.engine))
        return torch.cat(out)

    def _influence_direction(self, box: GlassBox) -> Tensor:
        """``(H + dI)^-1 g_val`` as a flat vector over the trainable parameters."""
        if box.val_ids is None or len(box.val_ids) == 0:
            raise ValueError("mode='influence' needs validation ids (val_ids) for the validation loss.")
        from torch.utils.data import DataLoader, Subset

        # looked up when called (a test may put an exact inverse-HVP in its place)
        from healing_pl.gradients.lissa import lissa_inverse_hvp

        model = box.model
        params = trainable_parameters(model)
        if not params:
            raise ValueError("The model has no parameters that require gradients.")
        g_val = [torch.zeros_like(p) for p in params]
        n_val = len(box.val_ids)
        for start in range(0, n_val, self.batch_size):
            x, y = to_model(_stack_samples(box.dataset, box.val_ids[start : start + self.batch_size]), model)
            loss = box.loss_fn(model(x), y) * (len(x) / n_val)
            for acc, g in zip(g_val, torch.autograd.grad(loss, params), strict=True):
                acc += g
        vector = flatten(g_val).detach()
        loader = DataLoader(
            Subset(box.dataset, box.train_ids.tolist()),
            batch_size=self.batch_size,
            shuffle=True,
            generator=_generator(self.seed),
        )

        def batch_loss(m: nn.Module, batch) -> Tensor:  # LiSSA's loss_fn(model, batch) form
            x, y = to_model((batch[0], batch[1]), m)  # LiSSA moves them already: then a no-op
            return box.loss_fn(m(x), y)

        return lissa_inverse_hvp(
            model,
            batch_loss,
            loader,
            vector,
            damping=self.damping,
            scale=self.scale,
            depth=self.depth,
            repeats=self.lissa_repeats,
            progress=self.progress,
        ).detach()
