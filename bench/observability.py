#!/usr/bin/env python
"""What observability costs: the pipeline's handled/s and relay rate with metrics ports and JSON logs
on, as a ratio of the same run with them off (target ≥ 0.95), and what the per-message
instrumentation (metrics, log context, span hooks; always on) costs in microseconds.

    .venv/bin/python bench/observability.py            # 5,000 events, 3 alternated samples each
    .venv/bin/python bench/observability.py --quick    # a smoke test

Each sample is section 2 of bench/pipeline.py (real ``ozzy relay`` and ``ozzy worker`` processes,
events committed first, the relay woken to start the clock); "on" adds ``OZZY_METRICS_PORT=0`` (a
free port each, scraped every second by this script while it runs) and ``OZZY_LOG_FORMAT=json``.
Off and on alternate, so drift on a shared machine hits both alike; medians are compared. The last
line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import bench.pipeline as pipeline  # noqa: E402

TARGET_RATIO = 0.95


class Scraper:
    """Scrapes every metrics port the processes announce in their logs, once a second."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for path in Path(tempfile.gettempdir()).glob("ozzy-bench-*.log"):
                for port in set(re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", path.read_text(errors="replace"))):
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                        self.scrapes += 1
                    except OSError:
                        pass


def sample(env: pipeline.Environment, n: int, observed: bool) -> dict[str, Any]:
    extra = {"OZZY_METRICS_PORT": "0", "OZZY_LOG_FORMAT": "json"} if observed else {}
    original = pipeline.process_env
    pipeline.process_env = lambda settings, **kw: original(settings, **{**kw, **extra})  # type: ignore[assignment]
    scraper = Scraper()
    if observed:
        scraper.thread.start()
    try:
        result = pipeline.section_end_to_end(env, n)
    finally:
        pipeline.process_env = original
        scraper.stop.set()
    result["relay_events_per_s"] = pipeline.r(n / result["relay_finished_after_s"])
    result["scrapes"] = scraper.scrapes
    return result


def hook_cost(iterations: int = 20_000) -> float:
    """Microseconds the worker middleware's before and after hooks add to one message."""
    from dramatiq import Message
    from dramatiq.broker import MessageProxy

    from shared.observability.handlers import HandlerObservability

    middleware = HandlerObservability()
    envelope = {"event_id": "0193", "type": "bench.item_created", "metadata": {"correlation_id": "c"}}
    proxy = MessageProxy(Message(queue_name="q", actor_name="bench.h", args=(envelope,), kwargs={}, options={}))
    started = time.perf_counter()
    for _ in range(iterations):
        middleware.before_process_message(None, proxy)  # type: ignore[arg-type]
        middleware.after_process_message(None, proxy)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / iterations * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 events, one sample each")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.events or (500 if args.quick else 5_000)
    samples = args.samples or (1 if args.quick else 3)
    env = pipeline.Environment()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        env.setup()
        for k in range(samples):
            for mode in ("off", "on") if k % 2 == 0 else ("on", "off"):
                pipeline.say(f"== sample {k + 1}/{samples}, observability {mode}")
                runs[mode].append(sample(env, n, mode == "on"))
    finally:
        env.close()

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    handled = median("on", "handled_per_s") / median("off", "handled_per_s")
    relay = median("on", "relay_events_per_s") / median("off", "relay_events_per_s")
    per_message_us = hook_cost()
    result = {
        "benchmark": "ozzy-observability",
        "events": n,
        "samples": samples,
        "handled_per_s": {mode: [r["handled_per_s"] for r in runs[mode]] for mode in runs},
        "relay_events_per_s": {mode: [r["relay_events_per_s"] for r in runs[mode]] for mode in runs},
        "scrapes_while_on": sum(r["scrapes"] for r in runs["on"]),
        "ratio_handled_on_to_off": round(handled, 3),
        "ratio_relay_on_to_off": round(relay, 3),
        "worker_hooks_us_per_message": round(per_message_us, 2),
        "worker_hooks_share_of_a_message": round(per_message_us / (1e6 / median("off", "handled_per_s")), 4),
        "target_ratio": TARGET_RATIO,
        "target_met": handled >= TARGET_RATIO and relay >= TARGET_RATIO,
    }
    pipeline.say(f"handled/s on/off {handled:.3f}, relay on/off {relay:.3f}; hooks {per_message_us:.1f} µs a message")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
