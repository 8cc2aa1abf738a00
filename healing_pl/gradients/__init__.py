"""Gradient and curvature math shared by the unlearning methods and the adversaries.

* :mod:`~healing_pl.gradients.params`: trainable parameters as flat vectors, global-norm clipping, moving
  batches to the model's device and dtype, eval mode for a block.
* :mod:`~healing_pl.gradients.per_sample`: per-sample gradients (``torch.func`` or a loop) and their
  reductions (norms, dot products, sums of squares).
* :mod:`~healing_pl.gradients.fisher`: the diagonal Fisher of a cross-entropy classifier (true or
  empirical), from per-layer activation x output-gradient identities with a per-sample fallback.
* :mod:`~healing_pl.gradients.lissa`: Hessian-vector products and the LiSSA inverse-HVP.

This layer sits below the method families: it imports only torch (and tqdm), never the unlearning,
adversary or healing packages.
"""

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.gradients.lissa import hessian_vector_product, lissa_inverse_hvp
from healing_pl.gradients.per_sample import iter_per_sample_grads, per_sample_reduce, sum_of_squares

__all__ = [
    "diagonal_fisher",
    "hessian_vector_product",
    "iter_per_sample_grads",
    "lissa_inverse_hvp",
    "per_sample_reduce",
    "sum_of_squares",
]
