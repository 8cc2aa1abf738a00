"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al. 2021, "Machine Unlearning").

The primary set is split by a seeded permutation into ``S`` disjoint,
near-equal *shards*, and every shard into ``R`` near-equal *slices*.  One
model per shard is trained in isolation, incrementally: stage ``r``
(0-based) trains on the union of slices ``0..r`` for ``epochs_per_slice``
epochs, and a checkpoint (model and Adam state) is kept after every stage.
The ensemble answers by aggregating the shard models (majority vote or mean
softmax).

The modules, each with its part of the story in its docstring:

* :mod:`.common`: seeds, device and precision, building and snapshotting shard models;
* :mod:`.state`: the ensemble (:class:`SisaEnsemble`, :func:`aggregate`) and :class:`SisaState`;
* :mod:`.epochs`: the epochs of each slice stage (:func:`slice_epochs`);
* :mod:`.shards`: the assignment of ids to shards and slices, the recipe, and the shard file format
  (:func:`load_sisa`);
* :mod:`.train`: the plain training loop :func:`fit_plain`, :func:`train_sisa` and :func:`train_sisa_shard`;
* :mod:`.unlearn`: exact unlearning (:func:`unlearn_sisa`);
* :mod:`.heal`: healing the affected shards with twins (:func:`heal_sisa`).
* :mod:`.method`: SISA registered as an unlearning method (its knobs and cache key).
* :mod:`.protocol`: Bourtoule et al.'s protocol and the paper's authors' (10% of every slice held out, disjoint
  slice stages of N epochs, a vote weighted by held-out accuracy).

Public API: :class:`SisaEnsemble`, :func:`aggregate`, :class:`SisaState`,
:func:`make_assignment`, :func:`train_sisa`, :func:`train_sisa_shard`,
:func:`load_sisa`, :func:`unlearn_sisa`, :func:`heal_sisa`, :func:`fit_plain`
(the plain training loop, also used for the naive baseline), :func:`seed_for`,
:func:`slice_epochs`.
"""

from healing_pl.unlearning.sisa.common import seed_for
from healing_pl.unlearning.sisa.epochs import EPOCH_RULES, slice_epochs
from healing_pl.unlearning.sisa.heal import heal_sisa
from healing_pl.unlearning.sisa.protocol import HOLDOUT_FRACTION, PROTOCOLS, holdout_accuracies, split_holdout
from healing_pl.unlearning.sisa.shards import RECIPE_KEYS, SHARD_FORMAT, load_sisa, make_assignment
from healing_pl.unlearning.sisa.state import AGGREGATIONS, Assignment, SisaEnsemble, SisaState, aggregate
from healing_pl.unlearning.sisa.train import fit_plain, train_sisa, train_sisa_shard
from healing_pl.unlearning.sisa.unlearn import unlearn_sisa

__all__ = [
    "AGGREGATIONS",
    "EPOCH_RULES",
    "HOLDOUT_FRACTION",
    "PROTOCOLS",
    "RECIPE_KEYS",
    "SHARD_FORMAT",
    "Assignment",
    "SisaEnsemble",
    "SisaState",
    "aggregate",
    "fit_plain",
    "heal_sisa",
    "holdout_accuracies",
    "load_sisa",
    "make_assignment",
    "seed_for",
    "slice_epochs",
    "split_holdout",
    "train_sisa",
    "train_sisa_shard",
    "unlearn_sisa",
]
