#!/usr/bin/env python
"""Ordered handlers and replay (#14), each next to its baseline in the same run.

    .venv/bin/python bench/ordered.py            # ~2-4 minutes on 2 shared cores
    .venv/bin/python bench/ordered.py --quick    # a smoke test
    .venv/bin/python bench/ordered.py --no-replay --rounds 5   # only the ratios, more rounds

1. **Ordered / unordered throughput**: the same N events over 200 keys, already dispatched (a
   backlog), handled by 8 worker threads in this process (the batching worker `ozzy worker` runs;
   `--worker plain`: Dramatiq's, one transaction per delivery), once by ``test.ordered`` (``ordered_by="key"``)
   and once by ``test.unordered`` (same work: one row insert), turn by turn; the figure is the ratio
   of their rates (target >= 0.8): best round of each, and median of each. Run with no handler delay
   and with a 2 ms one (I/O-bound handlers). Each ordered round also says how many deliveries found
   an earlier one of their key unfinished (blocked, then released and sent again).
2. **Replay rate next to the relay's**: a log of L events the handler already handled, then the relay
   drains K new events (events/s), and a replay sends K old events again (events/s, no throttle, no
   worker: the rate at which it can put work on the queue).

Servers as the tests find them (``tests/servers.py``): a fresh database and Redis namespace, removed at
the end. The last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
from sqlalchemy import text  # noqa: E402

from shared.config import Config  # noqa: E402
from shared.db.engine import make_engine  # noqa: E402
from shared.delivery import ordering, replay  # noqa: E402
from shared.delivery.batching import BatchingWorker  # noqa: E402
from shared.delivery.relay import Relay  # noqa: E402
from shared.runtime import Runtime  # noqa: E402
from tests import servers  # noqa: E402
from tests.ordered_handlers import TRACKER, Keyed, ordered, replayed, unordered  # noqa: E402

TABLES = "ozzy_deliveries, ozzy_outbox, test_side_effects, ozzy_replays, ozzy_delivery_history"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def reset(settings: Config) -> None:
    engine = make_engine(settings)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES}"))
    engine.dispose()


def publish(rt: Runtime, n: int, keys: int, per_commit: int = 200) -> None:
    rng = random.Random(14)
    events = [Keyed(key=f"k{rng.randrange(keys):03d}", n=i) for i in range(n)]
    for start in range(0, n, per_commit):
        with rt.unit_of_work() as uow:
            for event in events[start:start + per_commit]:
                uow.publish(event)
            uow.commit()


def count_done(rt: Runtime, handler: str) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ozzy_deliveries WHERE handler = :h AND status = 'done'"),
                                {"h": handler}).scalar_one())


#: Gates of ordered deliveries that found an earlier one of their key unfinished (blocked, then
#: released and sent again: the ordered handler's extra work beyond its gate), per run.
BLOCKED = {"count": 0}
_enter = ordering.enter


def counting_enter(*args, **kwargs):  # type: ignore[no-untyped-def]
    gate = _enter(*args, **kwargs)
    if gate is not None and gate.blocker is not None:
        BLOCKED["count"] += 1
    return gate


ordering.enter = counting_enter  # the worker looks it up at each call


WORKER = {"kind": "batching"}


def handling_rate(settings: Config, handler, n: int, keys: int, threads: int) -> float:  # type: ignore[no-untyped-def]
    """Events/s for one handler over a dispatched backlog of ``n`` events."""
    BLOCKED["count"] = 0
    reset(settings)
    rt = Runtime(settings, make_engine(settings), [handler])
    try:
        publish(rt, n, keys)
        Relay(rt).drain()
        name = next(iter(rt.handlers))
        # The worker `ozzy worker` runs (unordered deliveries batched, OZZY_WORKER_BATCH), or plain
        # Dramatiq's (one transaction per delivery for both).
        kind = BatchingWorker if WORKER["kind"] == "batching" else dramatiq.Worker
        worker = kind(rt.broker, worker_threads=threads, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        try:
            while count_done(rt, name) < n:
                time.sleep(0.05)
        finally:
            elapsed = time.perf_counter() - started
            worker.stop(timeout=10_000)
        return n / elapsed
    finally:
        rt.close()


def section_ratio(settings: Config, n: int, rounds: int, delay: float) -> dict[str, float]:
    TRACKER.reset()
    TRACKER.max_delay = 2 * delay  # uniform(0, 2*delay): a mean of ``delay``
    rates: dict[str, list[float]] = {"ordered": [], "unordered": []}
    for k in range(rounds):
        pair = [("ordered", ordered), ("unordered", unordered)]
        for label, handler in (pair if k % 2 == 0 else pair[::-1]):  # turn by turn: drift hits both
            rate = handling_rate(settings, handler, n, keys=200, threads=8)
            rates[label].append(rate)
            blocked = f" ({BLOCKED['count']} blocked, then released)" if label == "ordered" else ""
            say(f"delay {delay * 1000:.0f} ms, round {k + 1}: {label} {rate:,.0f} events/s{blocked}")
    best = {label: max(values) for label, values in rates.items()}
    # Best of each and, less sensitive to one lucky round on a shared machine, median of each.
    median = {label: statistics.median(values) for label, values in rates.items()}
    return {"ordered_per_s": round(best["ordered"]), "unordered_per_s": round(best["unordered"]),
            "ratio": round(best["ordered"] / best["unordered"], 3),
            "ratio_of_medians": round(median["ordered"] / median["unordered"], 3)}


def section_replay(settings: Config, log_size: int, k: int) -> dict[str, float]:
    reset(settings)
    rt = Runtime(settings, make_engine(settings), [replayed])
    try:
        # A log of ``log_size`` events, dispatched, each handled once by test.replayed (written in SQL).
        with rt.engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO ozzy_outbox (event_id, event_type, event_version, aggregate_id, payload, metadata,
                                         occurred_at, dispatched_at, dispatch_seq)
                SELECT gen_random_uuid(), 'test.keyed', 1, 'k' || (g % 200),
                       jsonb_build_object('key', 'k' || (g % 200), 'n', g), '{}'::jsonb, now(), now(),
                       nextval('ozzy_dispatch_seq')
                  FROM generate_series(1, :n) AS g"""), {"n": log_size})
            conn.execute(text("""
                INSERT INTO ozzy_deliveries (event_id, handler, status, attempts, enqueued_at, completed_at)
                SELECT event_id, 'test.replayed', 'done', 1, now(), now() FROM ozzy_outbox"""))
        vacuum(settings)
        say(f"log of {log_size:,} events written")
        publish(rt, k, keys=200, per_commit=500)
        started = time.perf_counter()
        relayed = Relay(rt).drain()
        relay_rate = relayed / (time.perf_counter() - started)
        say(f"relay: {relayed:,} events at {relay_rate:,.0f} events/s")
        with rt.engine.connect() as conn:
            first = conn.execute(text("SELECT min(dispatch_seq) FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL")).scalar_one()
        job = replay.create(rt, "test.replayed", replay.Filters(from_position=first + log_size // 2))
        started = time.perf_counter()
        done = replay.run(rt, job, replay.Throttle(batch_size=rt.config.batch_size, window=10**9))
        replay_rate = done["sent"] / (time.perf_counter() - started)
        say(f"replay: {done['sent']:,} deliveries at {replay_rate:,.0f} events/s")
        return {"log_size": log_size, "relay_per_s": round(relay_rate), "replay_per_s": round(replay_rate),
                "replayed": done["sent"], "replay_to_relay": round(replay_rate / relay_rate, 3)}
    finally:
        rt.close()


def vacuum(settings: Config) -> None:
    engine = make_engine(settings).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE ozzy_outbox"))
        conn.execute(text("VACUUM ANALYZE ozzy_deliveries"))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-replay", action="store_true", help="only the ordered/unordered ratios")
    parser.add_argument("--rounds", type=int, help="rounds of each ratio (3; 1 with --quick)")
    parser.add_argument("--worker", choices=("batching", "plain"), default="batching",
                        help="the worker class: ozzy worker's (batching, default) or plain Dramatiq's")
    args = parser.parse_args(argv)
    WORKER["kind"] = args.worker
    n, rounds, log_size = (1000, 1, 20_000) if args.quick else (4000, 3, 200_000)
    rounds = args.rounds or rounds
    results: dict[str, object] = {}
    with ExitStack() as stack:
        db_url, redis_url = servers.database_server_url(stack), servers.redis_server_url(stack)
        settings = stack.enter_context(servers.provisioned(db_url, redis_url))
        settings = settings.model_copy(update={"handler_modules": ("tests.ordered_handlers",)})
        results["ratio_no_delay"] = section_ratio(settings, n, rounds, 0.0)
        results["ratio_2ms"] = section_ratio(settings, n, rounds, 0.002)
        if not args.no_replay:
            results["replay"] = section_replay(settings, log_size, n * 5 if not args.quick else 2000)
    results["worker"] = args.worker
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
