"""Unlearning 25 samples of mnist5k: Influence and Fisher against naive retraining, in one run.

Trains a baseline small CNN on mnist5k (the project's recipe: Adam 1e-3, batch 64,
``--epochs``), picks ``--forget`` random primary samples, then times on the same
machine in the same process:

* ``naive``      retraining from scratch on the remain set (the gold standard; the peer)
* ``influence``  Koh & Liang removal with LiSSA (``--depth``, ``--scale``, ``--damping``)
* ``fisher``     noise-only Fisher forgetting (diagonal true Fisher over the remain set)

and prints each method's time, the ratio naive / method, and test accuracies.

Usage: ``python benchmarks/bench_unlearn.py [--epochs 10] [--forget 25] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import torch

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning import UNLEARNERS, unlearn_with_repeats
from healing_pl.unlearning.naive import train_classifier

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=28, lr=1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--forget", type=int, default=25)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--batch-r", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=8e-6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = HealingDataModule("mnist5k", seed=0)
    test = dm.test_dataloader()
    t0 = time.perf_counter()
    baseline = train_classifier(HP, dm, dm.primary_ids, epochs=args.epochs, seed=0)
    print(
        f"baseline: {args.epochs} epochs on {len(dm.primary_ids)} samples in {time.perf_counter() - t0:.1f} s, "
        f"test acc {evaluate(baseline, test)['acc']:.4f}; torch threads {torch.get_num_threads()}"
    )
    forget = dm.primary_ids[
        torch.randperm(len(dm.primary_ids), generator=torch.Generator().manual_seed(1))[: args.forget]
    ]
    rows = {}
    t0 = time.perf_counter()
    gold = train_classifier(HP, dm, dm.remain_ids(forget), epochs=args.epochs, seed=0)
    rows["naive (retrain)"] = (time.perf_counter() - t0, evaluate(gold, test)["acc"])
    configs = {
        "influence (LiSSA)": UNLEARNERS["influence"](
            depth=args.depth,
            scale=args.scale,
            damping=args.damping,
            batch_r=args.batch_r,
            batch_f=args.forget,
            cache_dir=None,
        ),
        "fisher (noise)": UNLEARNERS["fisher"](alpha=args.alpha, cache_dir=None),
    }
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        result = unlearn_with_repeats(baseline, dm, forget, cfg, test_loader=test)
        rows[name] = (time.perf_counter() - t0, result.accs[0])
    naive_time = rows["naive (retrain)"][0]
    print(f"{'method':<20} {'time [s]':>9} {'naive / method':>15} {'test acc':>9}")
    for name, (seconds, acc) in rows.items():
        print(f"{name:<20} {seconds:9.2f} {naive_time / seconds:14.1f}x {acc:9.4f}")


if __name__ == "__main__":
    main()
