"""The peers' harness of bench/peers.py works (issue #16): each writer commits its row with its job
or message, each peer's worker runs the same task, and the report and chart come out. A smoke test
on a handful of events; the figures themselves are measured by the bench, never here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

pytest.importorskip("procrastinate")

import bench.pipeline as pl  # noqa: E402
from bench import peers  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_env(monkeypatch: pytest.MonkeyPatch, database_server_url: str, redis_server_url: str) -> Iterator[peers.PeersDatabase]:
    monkeypatch.setattr(pl, "ADMIN_URL", database_server_url)
    monkeypatch.setattr(pl, "REDIS_URL", redis_server_url)
    for key in ("OZZY_PEER_DATABASE_URL", "OZZY_PEER_PROCRASTINATE_CONNINFO", "OZZY_PEER_REDIS_URL", "OZZY_PEER_REDIS_NAMESPACE"):
        monkeypatch.delenv(key, raising=False)
    env = pl.Environment()
    db = peers.PeersDatabase(env)
    try:
        env.setup()
        db.setup()
        yield db
    finally:
        db.close()
        env.close()


def test_each_writer_queues_its_work_in_or_after_its_transaction(bench_env: peers.PeersDatabase) -> None:
    ours = peers.Ours(bench_env.env)
    ours.fill_backlog(3)
    with ours.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bench_items")).scalar_one() == 3
        assert conn.execute(text("SELECT count(*) FROM ozzy_deliveries WHERE status = 'pending'")).scalar_one() == 3

    procrastinate = peers.Procrastinate(bench_env)
    procrastinate.reset()
    procrastinate.commit_one(7)
    with procrastinate.engine.connect() as conn:
        jobs = conn.execute(text("SELECT task_name, args FROM procrastinate_jobs")).all()
        assert conn.execute(text("SELECT seq FROM bench_items")).scalars().all() == [7]
    assert [(j.task_name, j.args["seq"]) for j in jobs] == [("bench.peer_record", 7)]

    dramatiq = peers.Dramatiq(bench_env)
    try:
        dramatiq.reset()
        dramatiq.commit_one(9)
        assert dramatiq.broker.client.llen(f"{dramatiq.broker.namespace}:default") == 1
        with dramatiq.engine.connect() as conn:
            assert conn.execute(text("SELECT seq FROM bench_items")).scalars().all() == [9]
    finally:
        dramatiq.close()


def test_peer_workers_drain_a_backlog_and_the_report_and_chart_come_out(
    bench_env: peers.PeersDatabase, tmp_path: Path
) -> None:
    systems: list[peers.System] = [peers.Procrastinate(bench_env), peers.Dramatiq(bench_env)]
    try:
        drained = {s.name: peers.drain(s, 5) for s in systems}
    finally:
        for system in systems:
            system.close()
    for name, figures in drained.items():
        assert figures["events"] == 5 and figures["handled_per_s"] > 0, name

    result = {"date": "now", "machine": {"cpus": 2}, "load": "1.0", "drain": {"ozzy": drained["dramatiq"], **drained}}
    rows = {what: (value, ok) for what, value, _, ok in peers.ratios(result)}
    assert rows["drain ozzy / dramatiq"] == (1.0, True)
    pytest.importorskip("matplotlib")
    peers.draw_chart(result, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_our_latency_is_split_in_segments_that_add_up_to_the_whole(bench_env: peers.PeersDatabase) -> None:
    ours = peers.Ours(bench_env.env)
    ours.reset()
    with ours.running():
        result = peers.latency(ours, rate=50.0, duration=0.3)
    split = result["split_ms"]
    assert list(split) == list(peers.SEGMENTS)
    for name, figures in split.items():
        assert figures["p50"] > 0, name  # each segment is a real stretch of time, in order
    # The medians of the parts come close to the median of the whole (they are of different samples).
    assert abs(sum(f["p50"] for f in split.values()) - result["p50_ms"]) < result["p50_ms"]


def test_latency_split_uses_each_clock_in_order_and_skips_incomplete_events() -> None:
    committed = {1: 10.000, 2: 20.000, 3: 30.000}
    stamps = {1: (10.001, 10.003), 2: (20.002, 20.003)}
    starts = {1: 10.004, 2: 20.005, 3: 30.009}  # event 3 has no stamps: left out
    split = peers.latency_split(committed, starts, stamps)
    assert split["commit_to_relay_begin"]["p50"] == pytest.approx(1.5)
    assert split["relay_begin_to_handler_begin"]["p50"] == pytest.approx(1.5)
    assert split["handler_begin_to_start"]["p50"] == pytest.approx(1.5)
