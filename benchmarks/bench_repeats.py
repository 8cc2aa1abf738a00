"""Fisher forgetting's repeats: one Fisher shared by the repeats of a start, against each repeat computing its own.

The paper's recipe runs Fisher forgetting ``--repeats`` times from the same model and forget set (only the noise
seed differs) and keeps the repeat closest to the mean validation accuracy. Rows, timed in the same process on the
paper's CNN over ``--primary`` mnist5k images:

* ``shared``  ``unlearn_with_repeats`` (the remain set's Fisher computed once, ``SharedStart``), without the
  repeats' evaluations
* ``alone``   the peer: ``--repeats`` runs of ``Fisher.run`` with no shared start, each computing its Fisher

Prints the first (cold) time of each, the medians of ``--rounds`` interleaved warm rounds, the ratio alone /
shared, and whether the shared repeats' models equal the lone runs' (they must: only the noise differs).

Usage: ``python benchmarks/bench_repeats.py [--primary 600] [--repeats 5] [--rounds 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import interleaved_medians

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.unlearning import Context, SharedStart, make_unlearner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primary", type=int, default=600, help="primary images (the remain set is these minus 10)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = HealingDataModule("mnist5k", primary=args.primary, backup=100, val=100, test=200, batch_size=64, seed=0)
    dm.setup("fit")
    torch.manual_seed(0)
    model = Classifier(backbone="paper_cnn", num_classes=10, in_chans=1, image_size=28, lr=1e-3)
    forget = dm.primary_ids[:10]
    fisher = make_unlearner("fisher", alpha=3.5e-3, shaping="paper", repeats=args.repeats, cache_dir=None)

    def shared():
        context = Context(shared=SharedStart())
        return [fisher.run(model, dm, forget, context, fisher.seed + i)[0] for i in range(args.repeats)]

    def alone():
        return [fisher.run(model, dm, forget, Context(), fisher.seed + i)[0] for i in range(args.repeats)]

    cold = {}
    models = {}
    for name, fn in (("shared", shared), ("alone", alone)):
        start = time.perf_counter()
        models[name] = fn()
        cold[name] = time.perf_counter() - start
    same = all(
        torch.equal(a, b)
        for m, n in zip(models["shared"], models["alone"], strict=True)
        for a, b in zip(m.state_dict().values(), n.state_dict().values(), strict=True)
    )
    warm = interleaved_medians({"shared": shared, "alone": alone}, args.rounds)
    print(f"Fisher, {args.repeats} repeats, paper CNN, {len(dm.remain_ids(forget))} remain images")
    print(f"{'row':8} {'cold s':>8} {'warm s':>8}")
    for name in ("shared", "alone"):
        print(f"{name:8} {cold[name]:8.2f} {warm[name]:8.2f}")
    print(f"alone / shared: cold {cold['alone'] / cold['shared']:.2f}x, warm {warm['alone'] / warm['shared']:.2f}x")
    print(f"the shared repeats' models equal the lone runs': {same}")


if __name__ == "__main__":
    main()
