"""Exact k-NN search: ``healing_pl.healing.search.nearest`` against named peers, warm and cold, in one run.

Peers (all L2, the same float32 data, the same thread count for torch, faiss and BLAS):

* ``faiss``   -- faiss-cpu ``IndexFlatL2``: build the index (``add``) and ``search``, both timed;
* ``matmul``  -- the bare work of a ``torch.cdist``-like search: ``|c|^2``, one ``addmm`` for
  ``|c|^2 - 2 q.c`` over the full score matrix, ``topk``, then ``|q|^2`` and ``sqrt`` on the k
  winners.  No exactness guarantee, no bounded memory: the floor any exact method pays;
* ``sklearn`` -- ``NearestNeighbors(algorithm="brute")`` fit + ``kneighbors`` (optional, ``--engines``).

Two measurements per shape (``--queries`` x ``--candidates`` at each of ``--dims``, k = ``--k``):

* **warm**: in this process, every engine runs once, then the engines run round-robin ``--repeats``
  times; the median of those calls;
* **cold**: the first call in a fresh Python process.  Each cold sample is a new subprocess that
  imports the libraries, makes the same data (same seed), sets the same threads and times only the
  call (imports and data excluded); ``--cold-repeats`` processes per engine, run round-robin, median.

Ratios printed (goals): warm ``nearest / faiss`` (<= 1.0) and cold ``nearest / matmul`` (<= 1.5),
each on wall seconds and on process CPU seconds.  On a shared machine run with ``--threads 1`` and
read the CPU columns: they are what the call cost, where wall seconds also count waiting for a core
(and several threads spin while they wait).  The header prints the load average.

``--pools`` adds a table of extra peak memory of one search as the pool grows (fresh subprocess
per cell, peak RSS reset through ``/proc/self/clear_refs`` on Linux).

Usage::

    python benchmarks/bench_search.py --threads 1                  # default shapes, a few minutes
    python benchmarks/bench_search.py --queries 200 --candidates 5000 --repeats 3 --cold-repeats 3
    python benchmarks/bench_search.py --pools 10000 50000 200000   # plus the memory table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from healing_pl.healing.search import nearest

ENGINES = ("nearest", "faiss", "matmul", "sklearn")


def _threads(n: int) -> None:
    """Give every library the same number of threads."""
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def _data(n_q: int, n_c: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_q, dim, generator=g), torch.rand(n_c, dim, generator=g)


def _matmul_knn(q: torch.Tensor, c: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimal cdist-like k-NN: one product over the full score matrix plus topk."""
    c_sq = c.square().sum(1)
    scores = torch.addmm(c_sq, q, c.t(), alpha=-2.0)  # |c|^2 - 2 q.c: same order as the distance
    v, i = torch.topk(scores, k, dim=1, largest=False)
    return v.add_(q.square().sum(1, keepdim=True)).clamp_(min=0.0).sqrt_(), i


def make_engine(name: str, c: torch.Tensor, k: int):
    """A function ``queries -> indices`` for one engine; everything it times is inside it."""
    if name == "nearest":
        return lambda q: nearest(q, c, k, "l2")[1]
    if name == "faiss":
        import faiss

        def run_faiss(q):
            index = faiss.IndexFlatL2(c.shape[1])
            index.add(c.numpy())
            return torch.from_numpy(index.search(q.numpy(), k)[1])

        return run_faiss
    if name == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        def run_sklearn(q):
            nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(c.numpy())
            return torch.from_numpy(nn.kneighbors(q.numpy(), return_distance=False))

        return run_sklearn
    if name == "matmul":
        return lambda q: _matmul_knn(q, c, k)[1]
    raise ValueError(f"unknown engine {name!r}")


def available(engines) -> list[str]:
    out = []
    for name in engines:
        try:
            if name == "faiss":
                import faiss  # noqa: F401
            if name == "sklearn":
                import sklearn  # noqa: F401
        except ImportError:
            print(f"  ({name} is not installed; skipped)")
            continue
        out.append(name)
    return out


# --------------------------------------------------------------------------- warm


def warm_times(engines: list[str], q: torch.Tensor, c: torch.Tensor, k: int, repeats: int):
    """Round-robin timings after one warm-up call each; also returns each engine's indices."""
    fns = {name: make_engine(name, c, k) for name in engines}
    results = {name: fn(q) for name, fn in fns.items()}  # warm-up
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return times, cpu, results


# --------------------------------------------------------------------------- cold


def cold_case(engine: str, n_q: int, n_c: int, dim: int, k: int) -> dict:
    """Run in a fresh subprocess: seconds of the first call of ``engine`` (imports and data untimed)."""
    q, c = _data(n_q, n_c, dim)
    fn = make_engine(engine, c, k)
    c0, t0 = time.process_time(), time.perf_counter()
    fn(q)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _subprocess(args, flag: str, *values) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), flag, *map(str, values), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cold_times(args, engines: list[str], n_q: int, n_c: int, dim: int, k: int):
    """Wall and CPU seconds of the first call, one fresh process per sample, engines round-robin."""
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    for _ in range(args.cold_repeats):
        for name in engines:
            rec = _subprocess(args, "--_cold-case", name, n_q, n_c, dim, k)
            times[name].append(rec["seconds"])
            cpu[name].append(rec["cpu_seconds"])
    return times, cpu


# --------------------------------------------------------------------------- report


def speed(args) -> None:
    engines = available(args.engines)
    print(
        f"## speed: {args.queries} queries x {args.candidates} candidates, k={args.k}; "
        f"warm: median of {args.repeats} round-robin calls after a warm-up; "
        f"cold: median of {args.cold_repeats} fresh processes (first call only). "
        "Wall seconds, and process CPU seconds (steadier on a loaded machine with 1 thread)."
    )
    for dim in args.dims:
        q, c = _data(args.queries, args.candidates, dim)
        warm, warm_cpu, results = warm_times(engines, q, c, args.k, args.repeats)
        cold, cold_cpu = (
            cold_times(args, engines, args.queries, args.candidates, dim, args.k) if args.cold_repeats else ({}, {})
        )
        med = {("warm", n): statistics.median(ts) for n, ts in warm.items()}
        med.update({("warm cpu", n): statistics.median(ts) for n, ts in warm_cpu.items()})
        med.update({("cold", n): statistics.median(ts) for n, ts in cold.items()})
        med.update({("cold cpu", n): statistics.median(ts) for n, ts in cold_cpu.items()})
        print(f"\n### {dim} dims\n")
        print("| engine | warm s | warm cpu s | cold s | cold cpu s | cold / warm (wall) |")
        print("|---|---|---|---|---|---|")
        for n in engines:
            cells = [f"{med[(m, n)]:.4f}" if (m, n) in med else "-" for m in ("warm", "warm cpu", "cold", "cold cpu")]
            ratio = f"{med[('cold', n)] / med[('warm', n)]:.2f}" if ("cold", n) in med else "-"
            print(f"| {n} | " + " | ".join(cells) + f" | {ratio} |")
        print()
        for m in ("warm", "warm cpu", "cold", "cold cpu"):
            parts = [
                f"nearest / {peer} = {med[(m, 'nearest')] / med[(m, peer)]:.2f}"
                for peer in ("faiss", "matmul")
                if (m, peer) in med
            ]
            if parts:
                print(f"{m:>8}: " + ", ".join(parts))
        if ("warm", "faiss") in med:
            print(f"goal warm nearest / warm faiss <= 1.0: {med[('warm', 'nearest')] / med[('warm', 'faiss')]:.2f}")
        if ("cold", "matmul") in med:
            print(f"goal cold nearest / cold matmul <= 1.5: {med[('cold', 'nearest')] / med[('cold', 'matmul')]:.2f}")
        for label, table in (("cold wall", cold), ("cold cpu", cold_cpu)):
            if table:
                print(
                    f"{label} samples (s): "
                    + "; ".join(f"{n} " + " ".join(f"{t:.4f}" for t in ts) for n, ts in table.items())
                )
        ref = results["nearest"]
        for n in ("faiss", "matmul", "sklearn"):
            if n in results:
                same = (results[n] == ref).all(1).float().mean().item()
                print(f"rows with the same k indices as {n}: {100 * same:.1f}%")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_case(engine: str, n_c: int, dim: int, n_q: int, k: int) -> dict:
    """Run in a subprocess: resident memory (kB) before and at the peak of one search.

    On Linux the peak (VmHWM) is reset first through /proc/self/clear_refs, so
    the peak belongs to the search alone; elsewhere ``ru_maxrss`` is used.
    """
    q, c = _data(n_q, n_c, dim)
    tiny_q, tiny_c = _data(4, 64, dim, seed=1)
    make_engine(engine, tiny_c, 2)(tiny_q)  # load libraries, start thread pools
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    make_engine(engine, c, k)(q)
    try:
        peak = _status_kb("VmHWM")
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"before_kb": before, "peak_kb": peak}


def memory(args) -> None:
    engines = available(args.memory_engines)
    input_mb = [n * args.memory_dim * 4 / 2**20 for n in args.pools]
    print(
        f"\n## extra peak memory of one search (MB: peak RSS minus RSS before, fresh process per cell), "
        f"{args.queries} queries, {args.memory_dim} dims, k={args.k}"
    )
    print("| engine | " + " | ".join(f"{n} cand. ({mb:.0f} MB input)" for n, mb in zip(args.pools, input_mb)) + " |")
    print("|---|" + "---|" * len(args.pools))
    for engine in engines:
        cells = []
        for n_c in args.pools:
            rec = _subprocess(args, "--_memory-case", engine, n_c, args.memory_dim, args.queries, args.k)
            cells.append(f"{(rec['peak_kb'] - rec['before_kb']) / 1024:.0f}")
        print(f"| {engine} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[784, 128])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="warm calls per engine (after one warm-up)")
    ap.add_argument("--cold-repeats", type=int, default=5, help="fresh processes per engine (0: skip cold)")
    ap.add_argument("--engines", nargs="+", default=["nearest", "faiss", "matmul"], choices=ENGINES)
    ap.add_argument(
        "--pools", type=int, nargs="*", default=[], help="pool sizes for the memory table (default none: skip it)"
    )
    ap.add_argument("--memory-dim", type=int, default=784)
    ap.add_argument("--memory-engines", nargs="+", default=["nearest", "faiss", "matmul"], choices=ENGINES)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--_memory-case", nargs=5, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_cold-case", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _threads(args.threads)

    if args._memory_case:
        engine, n_c, dim, n_q, k = args._memory_case
        print(json.dumps(memory_case(engine, int(n_c), int(dim), int(n_q), int(k))))
        return
    if args._cold_case:
        engine, n_q, n_c, dim, k = args._cold_case
        print(json.dumps(cold_case(engine, int(n_q), int(n_c), int(dim), int(k))))
        return

    import platform

    versions = [f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for mod in ("faiss", "sklearn"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"# bench_search: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load}; "
        f"{args.threads} threads (torch, faiss, BLAS); {', '.join(versions)}"
    )
    speed(args)
    if args.pools:
        memory(args)


if __name__ == "__main__":
    main()
