"""Unlearning time of finetune, neggrad_plus, scrub, salun and ssd against naive retraining, in one run.

Data: digits (default) or mnist5k (``--dataset``); model: the small CNN at the project's recipe (Adam at the
dataset config's learning rate, batch 64, ``--epochs``). A baseline is trained on the primary set, ``--forget``
random primary samples are picked (seeded), then, in the same process:

* ``naive``: retraining from scratch on the remain set with the baseline's recipe (the gold standard): the peer
  every ratio is taken against;
* each method through :func:`healing_pl.unlearning.unlearn_with_repeats` at its defaults (one repeat).

Two measurements per row: **cold**, the first call in this process (each method's first run: imports, Lightning
set-up, allocator warm-up); **warm**, the median of ``--repeats`` further calls run round-robin, so a change of
machine load hits every row alike. Printed: seconds, the ratios naive / method (how many times faster than
retraining), and test and forget accuracy. The header prints ``uptime`` (the machine may be shared).

Usage: ``python benchmarks/bench_methods.py [--dataset digits] [--epochs 10] [--forget 100] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import time
import warnings

import torch

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning import make_unlearner, unlearn_with_repeats
from healing_pl.unlearning.naive import train_classifier

METHODS = ("finetune", "neggrad_plus", "scrub", "salun", "ssd")
RECIPES = {"digits": (8, 3e-3), "mnist5k": (28, 1e-3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=tuple(RECIPES), default="digits")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--forget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="warm calls per row (after the cold one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    size, lr = RECIPES[args.dataset]
    hp = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=size, lr=lr)
    dm = HealingDataModule(args.dataset, batch_size=64, seed=0)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# bench_methods: {dm.summary()}; small_cnn, Adam {lr:g}, batch 64, {args.epochs} epochs")
    print(f"# uptime: {uptime}")
    print(f"# cpus: {os.cpu_count()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    test = dm.test_dataloader()
    base = train_classifier(hp, dm, dm.primary_ids, epochs=args.epochs, seed=0)
    order = torch.randperm(len(dm.primary_ids), generator=torch.Generator().manual_seed(1))
    forget = dm.primary_ids[order[: args.forget]]
    forget_loader = dm.loader(forget)

    def naive():
        return train_classifier(hp, dm, dm.remain_ids(forget), epochs=args.epochs, seed=0)

    def method(name):
        cfg = make_unlearner(name, cache_dir=None)
        return lambda: unlearn_with_repeats(base, dm, forget, cfg, test_loader=test).model

    rows = {"naive (retrain)": naive, **{name: method(name) for name in METHODS}}
    cold, models = {}, {}
    for name, fn in rows.items():
        t0 = time.perf_counter()
        models[name] = fn()
        cold[name] = time.perf_counter() - t0
    warm = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            warm[name].append(time.perf_counter() - t0)
    warm = {name: statistics.median(ts) for name, ts in warm.items()}
    print(
        f"baseline: test acc {evaluate(base, test)['acc']:.4f}, forget acc {evaluate(base, forget_loader)['acc']:.4f} "
        f"({args.forget} random primary samples)"
    )
    print("| method | cold s | warm s | naive / method (cold) | naive / method (warm) | test acc | forget acc |")
    print("|---|---|---|---|---|---|---|")
    for name in rows:
        model = models[name]
        print(
            f"| {name} | {cold[name]:.2f} | {warm[name]:.2f} | {cold['naive (retrain)'] / cold[name]:.1f}x | "
            f"{warm['naive (retrain)'] / warm[name]:.1f}x | {evaluate(model, test)['acc']:.4f} | "
            f"{evaluate(model, forget_loader)['acc']:.4f} |"
        )
    print(f"# uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
