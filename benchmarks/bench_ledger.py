"""Membership check + hash-chained ledger: 100,000 unlearn requests in one run, then ``verify`` on the file.

Each batch of ``--batch`` requests goes through ``MembershipIndex.check``, ``Ledger.record`` (one write and one
fsync per call, then the ``ledger.head`` sidecar, replaced atomically with its own fsync) and
``MembershipIndex.commit``, as ``run_rounds`` does minus the round summary.  The requests mix what a stream
sends: training ids (some repeated later: ``already_unlearned``, or twice in a batch: ``duplicate``), pool
ids never trained on, ids outside the pool, and one in ``--by-hash`` named by content hash.

Every batch size runs twice, in one process: the plain SHA-256 chain and the keyed chain (HMAC-SHA256 under
``HEALING_PL_LEDGER_KEY``), so the two columns compare on the same machine load.

Goals (both chains): >= 10,000 requests/s through check + record + commit, and ``verify`` of the
100,000-line ledger < 2 s. The header prints ``uptime`` (the load average: the machine may be shared).

Usage::

    python benchmarks/bench_ledger.py                       # 100,000 requests, batches of 100 and 1,000
    python benchmarks/bench_ledger.py --requests 20000 --batch 1 10 100
    python benchmarks/bench_ledger.py --chains keyed
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

import torch
from torch.utils.data import TensorDataset

from healing_pl.adversary.ledger import KEY_ENV, Ledger, verify
from healing_pl.adversary.membership import MembershipIndex, Request, sample_hash


def make_requests(n: int, pool_size: int, members: int, by_hash: float, pool, seed: int = 0) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    kinds = torch.rand(n, generator=g)
    ids = torch.randint(members, (n,), generator=g).tolist()  # training ids, with repeats
    others = torch.randint(members, pool_size + 1000, (n,), generator=g).tolist()  # non-members, unknown ids
    out = []
    for i in range(n):
        k = float(kinds[i])
        if k < 0.1:
            out.append(Request("adversary", sample_id=others[i], kind="adversarial"))
        elif k < 0.1 + by_hash:
            out.append(Request(f"user-{i % 97}", sample_hash=sample_hash(pool[ids[i]][0])))
        else:
            out.append(Request(f"user-{i % 97}", sample_id=ids[i]))
    return out


def run(requests: list[Request], pool, members: int, batch: int, folder: str) -> dict:
    membership = MembershipIndex(pool, torch.arange(members))
    ledger = Ledger(folder)
    t_check = t_record = t_commit = 0.0
    start = time.perf_counter()
    for r, i in enumerate(range(0, len(requests), batch)):
        t0 = time.perf_counter()
        decisions = membership.check(requests[i : i + batch])
        t1 = time.perf_counter()
        ledger.record(decisions, round_index=r)
        t2 = time.perf_counter()
        membership.commit(decisions)
        t3 = time.perf_counter()
        t_check, t_record, t_commit = t_check + t1 - t0, t_record + t2 - t1, t_commit + t3 - t2
    total = time.perf_counter() - start
    t0 = time.perf_counter()
    report = verify(folder)
    t_verify = time.perf_counter() - t0
    assert report.ok and report.lines == len(requests), report.message
    return {
        "total": total,
        "check": t_check,
        "record": t_record,
        "commit": t_commit,
        "verify": t_verify,
        "size_mb": os.path.getsize(ledger.path) / 1e6,
        "accepted": len(membership.unlearned_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=150_000, help="pool size (samples of 1x8x8 float32)")
    parser.add_argument("--members", type=int, default=120_000, help="training ids: 0..members-1")
    parser.add_argument("--by-hash", type=float, default=0.1, help="share of requests named by content hash")
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 1000], help="requests per record() call")
    parser.add_argument(
        "--chains", nargs="+", default=["plain", "keyed"], choices=["plain", "keyed"], help="which chains to run"
    )
    parser.add_argument("--dir", default=None, help="where the ledgers go (default: a temporary folder)")
    args = parser.parse_args()

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# bench_ledger: {args.requests:,} requests, pool {args.pool:,}, {args.members:,} members")
    print(f"# uptime: {uptime}")
    print(f"# cpus: {os.cpu_count()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    pool = TensorDataset(torch.rand(args.pool, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    requests = make_requests(args.requests, args.pool, args.members, args.by_hash, pool)
    header = f"{'chain':>6} {'batch':>6} {'req/s':>9} {'total s':>8} {'check s':>8} {'record s':>9} {'commit s':>9}"
    print(f"{header} {'verify s':>9} {'MB':>6} {'accepted':>9}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for batch in args.batch:
            for chain in args.chains:
                if chain == "keyed":
                    os.environ[KEY_ENV] = "bench-ledger-key"
                else:
                    os.environ.pop(KEY_ENV, None)
                r = run(requests, pool, args.members, batch, os.path.join(tmp, f"{chain}-b{batch}"))
                print(
                    f"{chain:>6} {batch:>6} {args.requests / r['total']:>9,.0f} {r['total']:>8.2f} {r['check']:>8.2f} "
                    f"{r['record']:>9.2f} {r['commit']:>9.2f} {r['verify']:>9.2f} {r['size_mb']:>6.1f} "
                    f"{r['accepted']:>9,}"
                )
        os.environ.pop(KEY_ENV, None)
    print("# goals: req/s >= 10,000 (check + record + commit), verify < 2 s on the 100,000-line ledger, both chains")


if __name__ == "__main__":
    main()
