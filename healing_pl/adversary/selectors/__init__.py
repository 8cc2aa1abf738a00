"""The adversaries: who picks the forget set, with which knowledge and budget (one registered class each).

* :mod:`~healing_pl.adversary.selectors.surface`: the threat model's knowledge levels and the
  :class:`AttackSurface` that carries only what the granted knowledge allows (:func:`build_surface`).
* :mod:`~healing_pl.adversary.selectors.base`: the :class:`Selector` base class (the threat model every
  adversary has: budget, system and data knowledge, seed, batch size), the :data:`SELECTORS` registry and
  :func:`select_forget_set`, the pipeline's one call.
* one module per adversary: ``random`` (blind), ``targeted`` (``class``: one class), ``worst_logits``
  (output-aware), ``gradient`` (parameter-aware), ``blind_guess`` (blind to the training set) and
  ``unlearning_aware`` (parameter-aware and knows the unlearning method).

The CLI offers them as ``--adversary <Class> --adversary.<knob> value`` (``--adversary.help <Class>`` lists
the knobs). A new adversary is one module with a registered :class:`Selector` subclass that implements
``_choose``; every module of the package is imported, so it registers itself and nothing else names it.
"""

# each module registers its adversary; the registry keeps this order (the CLI and tables list them so)
# isort: off
from healing_pl.adversary.selectors import random, targeted, worst_logits, gradient  # noqa: F401
from healing_pl.adversary.selectors import blind_guess, unlearning_aware, mislabelled  # noqa: F401

# isort: on
from healing_pl.adversary.selectors.base import SELECTORS, Selector, select_forget_set
from healing_pl.adversary.selectors.blind_guess import BlindGuessSelector
from healing_pl.adversary.selectors.gradient import GradientSelector, per_sample_grad_norms, per_sample_grads_apply
from healing_pl.adversary.selectors.mislabelled import MislabelledSelector
from healing_pl.adversary.selectors.random import RandomSelector
from healing_pl.adversary.selectors.surface import (
    DATA_KNOWLEDGE,
    SYSTEM_KNOWLEDGE,
    AttackSurface,
    GlassBox,
    build_surface,
)
from healing_pl.adversary.selectors.targeted import ClassSelector
from healing_pl.adversary.selectors.unlearning_aware import UnlearningAwareSelector
from healing_pl.adversary.selectors.worst_logits import WorstLogitsSelector, margin_scores

__all__ = [
    "SELECTORS",
    "Selector",
    "RandomSelector",
    "ClassSelector",
    "WorstLogitsSelector",
    "GradientSelector",
    "BlindGuessSelector",
    "UnlearningAwareSelector",
    "MislabelledSelector",
    "SYSTEM_KNOWLEDGE",
    "DATA_KNOWLEDGE",
    "GlassBox",
    "AttackSurface",
    "build_surface",
    "select_forget_set",
    "per_sample_grad_norms",
    "per_sample_grads_apply",
    "margin_scores",
]

# a member in a new file of this package registers itself (after the built-in ones above)
from healing_pl.registry import import_members  # noqa: E402

import_members(__name__, __path__)
