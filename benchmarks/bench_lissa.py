"""Speed of one LiSSA recursion step against one training step, in one run.

Model: the paper's MNIST CNN shape (conv32-conv64-maxpool-fc128-fc10) on a
random batch of 1x28x28 inputs.  Rows, each per step on the same batch:

* ``train step``  forward + backward + Adam step: the reference the ratios
  are taken against;
* ``LiSSA step, new batch``  ``lissa_inverse_hvp`` run for ``--depth``
  steps on a loader of two different batches of that size (every step
  draws new data: the minibatch setting), divided by the depth (goal: <= 3x
  the reference);
* ``LiSSA step, same batch``  the same on a loader of the one batch: LiSSA
  then reuses the batch's gradient graph and each step is only the second
  backward pass;
* ``HVP (double backward)``  ``hessian_vector_product`` alone, the part of
  a LiSSA step that is not vector arithmetic.

Usage: ``python benchmarks/bench_lissa.py [--batch-size 128] [--depth 10]``.
Times are medians of ``--repeats`` interleaved rounds after one warm-up round.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from _timing import interleaved_medians, mnist_cnn

from healing_pl.gradients.lissa import cross_entropy_loss, hessian_vector_product, lissa_inverse_hvp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n", type=int, default=None, help="alias of --batch-size (samples in the batch)")
    ap.add_argument("--depth", type=int, default=10, help="steps timed per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b = args.n or args.batch_size

    torch.manual_seed(0)
    model = mnist_cnn()
    batch = (torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,)))
    other = (torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,)))
    n_params = sum(p.numel() for p in model.parameters())
    v = torch.randn(n_params)
    v /= v.norm()

    trainee = copy.deepcopy(model)
    opt = torch.optim.Adam(trainee.parameters(), lr=1e-4)

    def train_steps():
        for _ in range(args.depth):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(trainee(batch[0]), batch[1]).backward()
            opt.step()

    def lissa_steps(loader):
        def run():
            lissa_inverse_hvp(model, cross_entropy_loss, loader, v, damping=0.01, scale=1e3, depth=args.depth)

        return run

    def hvp_steps():
        for _ in range(args.depth):
            hessian_vector_product(model, cross_entropy_loss, batch, v)

    medians = interleaved_medians(
        {
            "train step (fwd+bwd+Adam)": train_steps,
            "LiSSA step, new batch": lissa_steps([batch, other]),
            "LiSSA step, same batch": lissa_steps([batch]),
            "HVP (double backward)": hvp_steps,
        },
        args.repeats,
    )
    ref = medians["train step (fwd+bwd+Adam)"]
    print(f"LiSSA vs training, MNIST CNN ({n_params} parameters), batch={b}, threads={torch.get_num_threads()}")
    print(f"{'per step':<28} {'ms':>9} {'x train':>8}")
    for name, t in medians.items():
        print(f"{name:<28} {1e3 * t / args.depth:9.1f} {t / ref:8.2f}")


if __name__ == "__main__":
    main()
