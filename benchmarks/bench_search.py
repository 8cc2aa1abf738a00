"""Exact k-NN search: ``healing_pl.healing.search.nearest`` against named peers, in one run.

Peers (all exact, all L2, same float32 data, same thread count):

* ``faiss IndexFlatL2`` -- faiss-cpu brute force (index built outside the timing);
* ``sklearn brute``     -- ``NearestNeighbors(algorithm="brute").kneighbors``;
* ``matmul``            -- the bare product ``queries @ candidates.T`` (no top-k at
  all: the floor any exact method pays, plus writing the full score matrix).

Part 1, speed: ``--queries`` x ``--candidates`` at each of ``--dims`` (default
1,000 x 50,000 at 784 pixels and 128 feature dims), k = ``--k``.  Each engine is
warmed up once, then the engines run round-robin ``--repeats`` times; the table
shows the median seconds and ``nearest / peer`` (below 1.0: ``nearest`` is
faster).  Goals: at least as fast as faiss flat, within 1.3x of the matmul.

Part 2, peak memory as the pool grows (``--pools``, default 10k, 50k, 200k
candidates at ``--memory-dim`` 784): every (engine, pool) runs in a fresh
subprocess that allocates the inputs, warms the engine up on a tiny problem,
resets the peak-RSS mark (Linux ``/proc/self/clear_refs``; elsewhere
``ru_maxrss``) and runs one search; the table shows peak minus resident before,
i.e. the extra memory the search needed.  For faiss it includes the index's
own copy of the candidates (``add``); for sklearn its float64 conversion.

Usage::

    python benchmarks/bench_search.py                       # full run, a few minutes
    python benchmarks/bench_search.py --queries 200 --candidates 5000 --pools 2000 8000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from healing_pl.healing.search import nearest

ENGINES = ("nearest", "faiss", "sklearn", "matmul")


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


def _data(n_q: int, n_c: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_q, dim, generator=g), torch.rand(n_c, dim, generator=g)


def make_engine(name: str, c: torch.Tensor, k: int):
    """A function ``queries -> indices`` for one engine (setup done here, untimed)."""
    if name == "nearest":
        return lambda q: nearest(q, c, k, "l2")[1]
    if name == "faiss":
        import faiss

        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c.numpy())
        return lambda q: torch.from_numpy(index.search(q.numpy(), k)[1])
    if name == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(c.numpy())
        return lambda q: torch.from_numpy(nn.kneighbors(q.numpy(), return_distance=False))
    if name == "matmul":
        return lambda q: q @ c.T
    raise ValueError(f"unknown engine {name!r}")


def available(engines):
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


def speed(args) -> None:
    engines = available(args.engines)
    print(f"## speed: {args.queries} queries x {args.candidates} candidates, k={args.k}, "
          f"median of {args.repeats} round-robin repeats after a warm-up")
    for dim in args.dims:
        q, c = _data(args.queries, args.candidates, dim)
        fns = {name: make_engine(name, c, args.k) for name in engines}
        results = {name: fn(q) for name, fn in fns.items()}  # warm-up
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ours = med["nearest"]
        print(f"\n{dim} dims")
        print(f"| engine | median s | min s | nearest / engine |")
        print(f"|---|---|---|---|")
        for name in engines:
            print(f"| {name} | {med[name]:.3f} | {min(times[name]):.3f} | {ours / med[name]:.2f} |")
        ref = results["nearest"]
        for name in ("faiss", "sklearn"):
            if name in results:
                same = (results[name] == ref).all(1).float().mean().item()
                print(f"  rows with the same k indices as {name}: {100 * same:.1f}%")


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
        before, peak = _status_kb("VmRSS"), None
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
    print(f"\n## extra peak memory of one search (MB: peak RSS minus RSS before, fresh process per cell), "
          f"{args.queries} queries, {args.memory_dim} dims, k={args.k}")
    print("| engine | " + " | ".join(f"{n} cand. ({mb:.0f} MB input)" for n, mb in zip(args.pools, input_mb)) + " |")
    print("|---|" + "---|" * len(args.pools))
    for engine in engines:
        cells = []
        for n_c in args.pools:
            cmd = [sys.executable, __file__, "--_memory-case", engine, str(n_c), str(args.memory_dim),
                   str(args.queries), str(args.k), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            cells.append(f"{(rec['peak_kb'] - rec['before_kb']) / 1024:.0f}")
        print(f"| {engine} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[784, 128])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--pools", type=int, nargs="*", default=[10_000, 50_000, 200_000],
                    help="pool sizes for the memory table (none: skip it)")
    ap.add_argument("--memory-dim", type=int, default=784)
    ap.add_argument("--memory-engines", nargs="+", default=["nearest", "faiss", "sklearn", "matmul"],
                    choices=ENGINES)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--_memory-case", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _threads(args.threads)

    if args._memory_case:
        engine, n_c, dim, n_q, k = args._memory_case
        print(json.dumps(memory_case(engine, int(n_c), int(dim), int(n_q), int(k))))
        return

    import platform

    versions = [f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for mod in ("faiss", "sklearn"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    print(f"# bench_search: {platform.processor() or platform.machine()}, {args.threads} threads "
          f"(torch, faiss, BLAS); {', '.join(versions)}")
    speed(args)
    if args.pools:
        memory(args)


if __name__ == "__main__":
    main()
