"""bench/loan_http.py works (issue #16, target 5): in quick mode it starts real web, relay and worker
processes, posts applications over HTTP, sees each one final, and reports the split per hop from
the system's own timestamps. A smoke test; the figures themselves are measured by the bench, never
asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[2]
SEGMENTS = ["web"] + [f"hop{k}.{p}" for k in (1, 2, 3) for p in ("to_relay", "to_handler", "handler")] + ["final_commit"]


def bench_databases(database_server_url: str) -> set[str]:
    engine = create_engine(database_server_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


def test_quick_run_reports_throughput_latency_and_the_split_per_hop(database_server_url: str,
                                                                    redis_server_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OZZY_")}
    env.update(OZZY_BENCH_DATABASE_URL=database_server_url, OZZY_BENCH_REDIS_URL=redis_server_url)
    run = subprocess.run(
        [sys.executable, "bench/loan_http.py", "--quick", "--seconds", "2", "--samples", "8", "--gap", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in result

    calm = result["calm"]
    assert calm["samples"] == 8
    assert calm["submit_to_final_ms"]["n"] == 8
    assert list(calm["split_ms"]) == SEGMENTS
    for name, figures in calm["split_ms"].items():
        # Every application went through every hop, and the timestamps follow the causal order.
        assert figures["n"] == 8, name
        assert figures["p50"] >= 0, (name, figures)
    assert set(calm["hop_p50_sum_ms"]) == {"hop1", "hop2", "hop3"}

    throughput = result["throughput"]
    assert throughput["clients"] == 8
    assert throughput["submitted"] > 0
    assert 0 <= throughput["completed_in_window"] <= throughput["submitted"]
    assert "calm submit -> final" in run.stdout and "hop2.to_handler" in run.stdout
    # The bench removed its database.
    assert result["database"].startswith("ozzy_test_")
    assert result["database"] not in bench_databases(database_server_url)
