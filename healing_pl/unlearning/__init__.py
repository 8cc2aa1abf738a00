"""Unlearning methods, one registered class each (``--unlearn <Class>``; its constructor arguments are its knobs).

Naive (retraining: the gold standard), SISA (shards x slices), Fisher forgetting and Influence (LiSSA) as the
paper ran them; Finetune, NegGradPlus, SCRUB, SalUn and SSD as their authors run them. A new method is one
module with a registered :class:`~healing_pl.unlearning.base.Unlearner` subclass; every module of the
package is imported, so it registers itself.
"""

# isort: off
# each module registers its method, in the order of help texts and tables
from healing_pl.unlearning import naive  # noqa: F401
from healing_pl.unlearning.sisa import method as sisa_method  # noqa: F401
from healing_pl.unlearning import fisher, influence, finetune, neggrad_plus, scrub, salun, ssd  # noqa: F401

# isort: on
from healing_pl.unlearning.base import (
    UNLEARNERS,
    Context,
    SharedStart,
    StochasticUnlearner,
    Unlearner,
    UnlearnResult,
    check_divergence,
    copy_model,
    learning_rate,
    make_unlearner,
    representative_repeat,
    unlearn_with_repeats,
)

__all__ = [
    "UNLEARNERS",
    "Context",
    "SharedStart",
    "StochasticUnlearner",
    "UnlearnResult",
    "Unlearner",
    "check_divergence",
    "copy_model",
    "learning_rate",
    "make_unlearner",
    "representative_repeat",
    "unlearn_with_repeats",
]

# a member in a new file of this package registers itself (after the built-in ones above)
from healing_pl.registry import import_members  # noqa: E402

import_members(__name__, __path__)
