"""SISA unlearning of one sample against naive retraining from scratch, measured in one run.

Data: mnist5k (HealingDataModule defaults: 70% primary, 3,500 samples); model: the
small CNN (``Classifier(backbone="small_cnn", num_classes=10, in_chans=1,
image_size=28, lr=1e-3)``).  Every training uses the same plain loop
(:func:`healing_pl.unlearning.sisa.fit_plain`: Adam, cross-entropy, seeded
shuffle).  Rows:

* ``baseline``      one model trained on the primary set for ``--epochs`` epochs
  (the paper's Table 1 baseline);
* ``SISA train``    ``--shards`` x ``--slices`` SISA, ``--sisa-epochs`` per slice: ``passes`` (the
  library's default, ceil(2N/(R+1)): every sample sees N passes on average, 4 for N=10, R=5) or
  ``per_slice`` (round(N/R), 2; the rule before; the ratio recorded in docs/experiments.md);
* then, ``--repeats`` times, one random primary sample is deleted:
  ``SISA unlearn`` retrains the one shard holding it from the checkpoint before
  its slice (the restart slice varies, hence the average), and ``naive``
  retrains a fresh model from scratch on the remain set for ``--epochs`` epochs
  (the gold standard).

The ratio printed is mean naive time / mean SISA unlearning time (goal: >= 5x),
with the test accuracy of every model; the ratio of work (sample-epochs trained)
is printed too, as timings on shared cores are noisy.  With 3x5 slices and e
epochs per slice, the expected work ratio for one deletion is
10 / (e * (R+1)(2R+1) / (6R) / S): 6.8x for e=2 (5.0x when the sample is in slice 0), 3.4x for e=4.

Usage: ``python benchmarks/bench_sisa.py [--epochs 10] [--repeats 3] [--sisa-epochs passes|per_slice]
[--threads 1] [--device cuda:0]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.unlearning.sisa import fit_plain, seed_for, train_sisa, unlearn_sisa


def naive(
    hparams: dict, dm: HealingDataModule, ids, epochs: int, seed: int, device: str = "cpu"
) -> tuple[Classifier, float]:
    """A fresh model trained from scratch on ``ids`` with the plain loop; returns it and the seconds taken."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for("naive-init", seed))
        model = Classifier(**hparams).to(device)
    fit_plain(model, dm, ids, epochs=epochs, seed=seed_for("naive", seed), device=device)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10, help="baseline / naive epochs (SISA: epochs / slices per slice)")
    ap.add_argument("--repeats", type=int, default=3, help="random samples unlearned (one at a time)")
    ap.add_argument("--sisa-epochs", default="passes", help="epochs per slice: passes, per_slice or a number")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu", help="where every model trains, e.g. cuda:0")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = HealingDataModule("mnist5k", batch_size=args.batch_size, seed=args.seed)
    hp = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=28, lr=1e-3)
    test = dm.test_dataloader()
    print(
        f"{dm.summary()}; small_cnn, Adam lr 1e-3, batch {args.batch_size}, "
        f"{args.epochs} epochs, SISA {args.shards}x{args.slices}, torch threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )

    base, t_base = naive(hp, dm, dm.primary_ids, args.epochs, args.seed, args.device)
    acc_base = evaluate(base, test)["acc"]
    state = train_sisa(
        hp,
        dm,
        shards=args.shards,
        slices=args.slices,
        epochs=args.epochs,
        epochs_per_slice=int(args.sisa_epochs) if args.sisa_epochs.isdigit() else args.sisa_epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.progress,
    )
    acc_sisa = evaluate(state.ensemble, test)["acc"]
    print(f"{'baseline':<14} time {t_base:7.2f} s   acc {acc_base:.4f}")
    print(
        f"{'SISA train':<14} time {state.train_time:7.2f} s   acc {acc_sisa:.4f}   "
        f"({state.epochs_per_slice} epochs per slice; {state.train_time / t_base:.2f}x the baseline's time)"
    )

    gen = torch.Generator().manual_seed(seed_for("bench-forget", args.seed))
    picks = dm.primary_ids[torch.randperm(dm.primary_ids.numel(), generator=gen)[: args.repeats]]
    t_sisa, t_naive, acc_u, acc_gs, work = [], [], [], [], []
    for i, fid in enumerate(picks.tolist()):
        unlearned, info = unlearn_sisa(state, [fid], dm, progress=args.progress)
        gs, t_gs = naive(hp, dm, dm.remain_ids([fid]), args.epochs, args.seed, args.device)
        ((s, r),) = info["restart_slice"].items()
        work.append(info["samples_retrained"])
        t_sisa.append(info["time"])
        t_naive.append(t_gs)
        acc_u.append(evaluate(unlearned.ensemble, test)["acc"])
        acc_gs.append(evaluate(gs, test)["acc"])
        print(
            f"  request {i + 1}: id {fid:5d}  shard {s} restart slice {r} "
            f"({info['samples_retrained']} sample-epochs)  SISA {info['time']:6.2f} s acc {acc_u[-1]:.4f} | "
            f"naive {t_gs:6.2f} s acc {acc_gs[-1]:.4f}  -> {t_gs / info['time']:.1f}x"
        )
    m_sisa, m_naive = statistics.mean(t_sisa), statistics.mean(t_naive)
    print(f"{'SISA unlearn':<14} time {m_sisa:7.2f} s   acc {statistics.mean(acc_u):.4f}   (mean of {args.repeats})")
    print(f"{'naive retrain':<14} time {m_naive:7.2f} s   acc {statistics.mean(acc_gs):.4f}   (mean of {args.repeats})")
    ratio = m_naive / m_sisa
    naive_work = args.epochs * (dm.primary_ids.numel() - 1)
    print(f"ratio naive / SISA unlearning time: {ratio:.1f}x  (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print(
        f"ratio of work (sample-epochs, immune to load on shared cores): naive {naive_work} / SISA mean "
        f"{statistics.mean(work):.0f} = {naive_work / statistics.mean(work):.1f}x"
    )


if __name__ == "__main__":
    main()
