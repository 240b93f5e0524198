"""Worker batching (#16): the backlog drain of one ``ozzy worker`` process, deliveries one per
transaction (``OZZY_WORKER_BATCH=1``) against several per transaction, alternated in one run.

    .venv/bin/python bench/worker_batch.py                       # 5,000 events, 3 rounds, batch 1 vs 8
    .venv/bin/python bench/worker_batch.py --batches 1,4,8,16 --rounds 4 --peers dramatiq

The drain is bench/peers.py's (the same backlog, handler and ``handled/s`` from the handlers' own
start times); CPU per event is the worker's CPU time from its first handled event to its last,
divided by the events handled in between. ``--peers dramatiq`` adds the Dramatiq peer to every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import bench.pipeline as pl  # noqa: E402
from bench.common import BenchError, wait_until  # noqa: E402
from bench.peers import WORKER_THREADS, Dramatiq, Ours, PeersDatabase, System, tree_cpu_seconds  # noqa: E402

say = pl.say


class Batched(Ours):
    """Our worker with ``OZZY_WORKER_BATCH`` set."""

    def __init__(self, env: pl.Environment, batch: int) -> None:
        super().__init__(env)
        self.batch = batch
        self.name = f"ozzy batch {batch}"

    @contextmanager
    def worker(self) -> Iterator[int]:
        process_env = pl.process_env(self.settings, OZZY_WORKER_BATCH=str(self.batch))
        with pl.ozzy_processes(process_env, ["worker", "--threads", str(WORKER_THREADS)]) as procs:
            yield procs[0].pid


def drain(system: System, n: int) -> dict[str, Any]:
    system.reset()
    system.fill_backlog(n)
    load = pl.loadavg()
    with system.worker() as pid:
        wait_until(lambda: system.count(0, n) >= 1, timeout=120, interval=0.005, what="first handled")
        cpu0, done0 = tree_cpu_seconds(pid), system.count(0, n)
        wait_until(lambda: system.count(0, n) >= n, timeout=max(120.0, n / 10), interval=0.05,
                   what=f"{system.name}: {n} handled")
        cpu = tree_cpu_seconds(pid) - cpu0
    starts = sorted(system.starts(0, n).values())
    if len(starts) != n:
        raise BenchError(f"{system.name}: {len(starts)} effects for {n} events")
    rate = (n - 1) / (starts[-1] - starts[0])
    cpu_ms = cpu * 1000 / max(1, n - done0)
    say(f"   {system.name}: {rate:,.0f} handled/s, {cpu_ms:.2f} ms CPU per event (load {load:.1f})")
    return {"handled_per_s": round(rate, 1), "cpu_ms_per_event": round(cpu_ms, 3), "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8", help="OZZY_WORKER_BATCH values, alternated each round")
    parser.add_argument("--peers", default="", help="'dramatiq' to run the Dramatiq peer each round too")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    env = pl.Environment()
    db = PeersDatabase(env)
    results: dict[str, list[dict[str, Any]]] = {}
    systems: list[System] = []
    try:
        env.setup()
        systems.extend(Batched(env, int(b)) for b in args.batches.split(","))
        if "dramatiq" in args.peers:
            db.setup()
            systems.append(Dramatiq(db))
        for round_ in range(args.rounds):
            say(f"== round {round_ + 1}/{args.rounds}, {args.events} events")
            order = systems if round_ % 2 == 0 else list(reversed(systems))
            for system in order:
                results.setdefault(system.name, []).append(drain(system, args.events))
                time.sleep(1)
    finally:
        for system in systems:
            system.close()
        db.close()
        env.close()
    base = statistics.median(r["handled_per_s"] for r in results[next(iter(results))])
    say("== medians")
    summary = {}
    for name, runs in results.items():
        rate = statistics.median(r["handled_per_s"] for r in runs)
        cpu = statistics.median(r["cpu_ms_per_event"] for r in runs)
        summary[name] = {"handled_per_s": rate, "cpu_ms_per_event": cpu, "ratio_to_first": round(rate / base, 3),
                         "runs": runs}
        say(f"   {name}: {rate:,.0f} handled/s ({rate / base:.2f}x), {cpu:.2f} ms CPU per event")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
