"""bench/scaling.py runs (issue #16): on private servers it starts, 1 and 2 workers drain, 1 and 2
relays dispatch, the lock sampler, the per-event counters and the batch timing come out, and the
relay module's names are back as they were. A smoke test on small counts; the figures themselves are
measured by the bench, never here."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from bench import scaling
import shared.delivery.messages as messages
import shared.delivery.relay as relay_module

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not all(shutil.which(p) for p in ("pg_ctl", "redis-server")),
                    reason="needs PostgreSQL's programs and redis-server to start private servers")
def test_quick_run_measures_one_and_two_workers_and_relays(capsys: pytest.CaptureFixture[str]) -> None:
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = scaling.main(["--quick"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and "error" not in result, result.get("error")
    assert result["servers"]["private"] is True

    drain = result["drain"]["median"]
    assert set(drain) == {"1", "2"}
    for figures in drain.values():
        assert figures["handled_per_s"] > 0 and figures["events"] == 300
        assert figures["wal_bytes_per_event"] > 0 and figures["redis_commands_per_event"] > 0
    assert result["drain"]["ratio_handled_per_s_2_to_1"] > 0

    for run in result["relay"]["runs"]:
        assert run["events"] == 2000 and run["batches"] >= 4 and run["samples"] > 0
        assert run["wal_bytes_per_event"] > 0
        assert {"hset", "rpush"} <= set(run["redis_commands"])
    assert {run["relays"] for run in result["relay"]["runs"]} == {1, 2}

    phases = result["batch_phases"]["500"]
    assert phases["batches"] >= 4 and phases["lock_hold_ms_median"] > 0
    assert phases["lock_bound_events_per_s"] >= phases["one_relay_events_per_s"]
    assert result["writes"]["one_event_per_commit"]["wal_bytes_per_event"] > 0
    assert result["fsync"]["fdatasyncs_per_s"] > 0
    # The timed drain wrapped the relay module's names and put them back.
    assert relay_module.send is messages.send
    assert relay_module.mark_dispatched.__module__ == "shared.delivery.relay"
