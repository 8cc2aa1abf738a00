"""Shared by the benchmarks: the paper's MNIST CNN shape and interleaved median timing."""

from __future__ import annotations

import statistics
import time

from torch import nn


def mnist_cnn() -> nn.Module:
    """conv32-conv64-maxpool-fc128-fc10, the common MNIST CNN (heavier than the project's small_cnn)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in interleaved rounds.

    Every function runs once as a warm-up, then each round times every
    function once, so a change of machine load hits all of them alike.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
