"""Speed of ``diagonal_fisher`` against named peers, measured in one run.

Model: the paper's MNIST CNN shape (conv32-conv64-maxpool-fc128-fc10) on
random 1x28x28 inputs.  Rows, each over the same N samples:

* ``forward+backward``  one plain training-style pass (loss.backward) over
  the N samples: the reference the ratios are taken against;
* ``fisher empirical`` / ``fisher true``  ``diagonal_fisher`` (goal for
  the empirical Fisher: <= 2x the reference);
* ``per-sample loop``  the naive peer: one sample at a time (and one
  backward per class for the true Fisher), autograd.grad, squared; timed on
  ``--loop-n`` samples and scaled to N;
* ``torch.func vmap``  per-sample gradients with functional_call + vmap(grad),
  squared and summed (empirical Fisher);
* ``engine vmap``  the same through the project's shared per-sample engine
  (``healing_pl.gradients.per_sample.sum_of_squares`` with the cotangents
  ``p - onehot(y)``): what ``diagonal_fisher`` pays for parameters outside
  the Linear/Conv2d/norm layers (its fallback), and the engine of the
  gradient selector.

Usage: ``python benchmarks/bench_fisher.py [--n 2048] [--batch-size 256]``.
Times are medians of ``--repeats`` interleaved rounds after one warm-up run
(interleaved so that a change of machine load hits every row alike).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import interleaved_medians, mnist_cnn

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.gradients.per_sample import sum_of_squares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="number of samples")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--loop-n", type=int, default=64, help="samples timed for the per-sample loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = mnist_cnn().eval()
    x = torch.randn(args.n, 1, 28, 28)
    y = torch.randint(0, 10, (args.n,))
    loader = [(x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, args.n, args.batch_size)]
    params = [p for p in model.parameters()]

    def fwd_bwd():
        for xb, yb in loader:
            F.cross_entropy(model(xb), yb).backward()
        model.zero_grad(set_to_none=True)

    def loop(n, kind):
        """The naive peer: one sample (and, for the true Fisher, one class) at a time."""

        def run():
            acc = [torch.zeros_like(p) for p in params]
            for i in range(n):
                logits = model(x[i : i + 1])
                if kind == "empirical":
                    pairs = [(int(y[i]), 1.0)]
                else:
                    prob = logits.detach().softmax(-1)[0]
                    pairs = [(c, float(prob[c])) for c in range(logits.shape[1])]
                for k, (c, weight) in enumerate(pairs):
                    loss = F.cross_entropy(logits, torch.tensor([c]))
                    grads = torch.autograd.grad(loss, params, retain_graph=k + 1 < len(pairs))
                    for a, g in zip(acc, grads):
                        a += weight * g.square()

        return run

    from torch.func import functional_call, grad, vmap

    named = {k: v.detach() for k, v in model.named_parameters()}

    def vmap_fisher():
        def loss_one(p, xi, yi):
            return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        acc = {k: torch.zeros_like(v) for k, v in named.items()}
        for xb, yb in loader:
            g = vmap(grad(loss_one), in_dims=(None, 0, 0))(named, xb, yb)
            for k in acc:
                acc[k] += g[k].square().sum(0)

    def engine_fisher():
        """The Fisher fallback's computation for every parameter: cotangents p - onehot(y) at the logits."""
        acc = {k: torch.zeros_like(v) for k, v in named.items()}
        for xb, yb in loader:
            with torch.no_grad():
                p = model(xb).softmax(-1)
            cots = (p - F.one_hot(yb, p.shape[1]).to(p.dtype)).unsqueeze(1)  # (B, 1, C)
            for k, s in sum_of_squares(model, xb, cotangents=cots, engine="vmap").items():
                acc[k] += s

    loop_n = min(args.loop_n, args.n)
    scale = args.n / loop_n
    loop_emp = f"per-sample loop empirical (x{scale:g})"
    loop_true = f"per-sample loop true (x{scale:g})"
    medians = interleaved_medians(
        {
            "forward+backward": fwd_bwd,
            "fisher empirical": lambda: diagonal_fisher(model, loader, "empirical"),
            "fisher true (10 classes)": lambda: diagonal_fisher(model, loader, "true"),
            loop_emp: loop(loop_n, "empirical"),
            loop_true: loop(loop_n, "true"),
            "torch.func vmap(grad) empirical": vmap_fisher,
            "engine vmap empirical": engine_fisher,
        },
        args.repeats,
    )
    medians[loop_emp] *= scale
    medians[loop_true] *= scale
    rows = list(medians.items())
    ref = rows[0][1]
    print(f"diagonal Fisher, MNIST CNN, N={args.n}, batch={args.batch_size}, threads={torch.get_num_threads()}")
    print(f"{'method':<36} {'seconds':>9} {'x fwd+bwd':>10}")
    for name, t in rows:
        print(f"{name:<36} {t:9.3f} {t / ref:10.2f}")


if __name__ == "__main__":
    main()
