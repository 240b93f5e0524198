"""Replay and backfill survive a SIGKILL of the replaying process (#14): each selected (event,
handler) runs exactly once more, whether the job died before or after a batch's commit."""

from __future__ import annotations

import subprocess
from collections import Counter

from shared.delivery.relay import Relay
from tests.e2e.procs import OZZY, ROOT, OzzyProcess, process_env
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until
from tests.ordered_handlers import Keyed, replayed, unordered


def publish(runtime, events) -> None:
    with runtime.unit_of_work() as uow:
        for event in events:
            uow.publish(event)
        uow.commit()


def runs_per_event(runtime) -> Counter[str]:
    with runtime.engine.connect() as conn:
        return Counter(r[0] for r in conn.exec_driver_sql(
            "SELECT event_key FROM test_side_effects WHERE handler = 'replayed'"))


def test_a_replay_killed_in_the_middle_and_resumed_runs_each_event_exactly_once_more(clean_db, monkeypatch) -> None:
    # Given 200 events the handler ran once, and 200 from before it existed (routed elsewhere)
    monkeypatch.setenv("OZZY_TEST_REPLAY_DELAY", "0.002")
    worker_rt = make_runtime(clean_db, handlers=[replayed, unordered], worker_idle_ms=100)
    before_rt = make_runtime(clean_db, handlers=[unordered])
    env = process_env(clean_db, OZZY_HANDLER_MODULES='["tests.ordered_handlers"]')
    command = ["replay", "--handler", "test.replayed", "--batch-size", "10", "--window", "10", "--rate", "150"]
    try:
        publish(before_rt, [Keyed(key="old", n=n) for n in range(200)])
        Relay(before_rt).drain()
        publish(worker_rt, [Keyed(key="seen", n=n) for n in range(200)])
        with running_worker(worker_rt, threads=4):
            Relay(worker_rt).drain()
            wait_until(lambda: scalar(worker_rt, "SELECT count(*) FROM ozzy_deliveries WHERE status <> 'done'") == 0)
            assert sum(runs_per_event(worker_rt).values()) == 200
            # When the replay is killed (SIGKILL) in the middle ...
            replaying = OzzyProcess(command, env)
            try:
                wait_until(lambda: (scalar(worker_rt, "SELECT sent FROM ozzy_replays") or 0) >= 100, timeout=60)
                replaying.kill()
            except BaseException:
                print(replaying.output()[-4000:])
                raise
            sent = scalar(worker_rt, "SELECT sent FROM ozzy_replays")
            assert 100 <= sent < 400, f"the kill came too late to test a resume (sent {sent})"
            # ... and the same command is run again, it resumes the job and finishes it
            finished = subprocess.run(OZZY + command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert finished.returncode == 0, finished.stdout + finished.stderr
            assert "resuming replay" in finished.stderr
            wait_until(lambda: scalar(worker_rt, "SELECT count(*) FROM ozzy_deliveries"
                                                 " WHERE handler = 'test.replayed' AND status <> 'done'") == 0,
                       timeout=60)
        # Then each event the handler had seen ran exactly once more, each older one exactly once
        runs = runs_per_event(worker_rt)
        assert {k: v for k, v in runs.items() if k.startswith("seen/")} == {f"seen/{n}": 2 for n in range(200)}
        assert {k: v for k, v in runs.items() if k.startswith("old/")} == {f"old/{n}": 1 for n in range(200)}
        assert scalar(worker_rt, "SELECT count(*) FROM ozzy_replays WHERE status = 'done' AND sent = 400") == 1
        # ... and the earlier outcome of each run-again delivery is kept in its history
        assert scalar(worker_rt, "SELECT count(*) FROM ozzy_delivery_history WHERE status = 'done'") == 200
    finally:
        worker_rt.close()
        before_rt.close()
