"""Workflows end to end: scheduled events, recurring jobs and the loan offer saga, run by real
``ozzy relay`` / ``ozzy worker`` / ``ozzy web`` processes, with relays SIGKILLed and Redis restarted
empty on purpose (a private ``redis-server`` per test; the shared servers are never touched).

Every test asserts exact outcomes (each scheduled event fired once, entered the event log once, and
each of its handlers ran once) under generous deadlines; timings are reported, never asserted.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.loans.model import credit_score, decide
from shared.ops.accounts import create_token, create_user
from tests.domain import Account, AccountOpened
from tests.e2e.faults import (
    assert_delivered_exactly_once,
    fault_env,
    redis_server,  # noqa: F401 (fixture: a private Redis per test)
    report,
    settings,  # noqa: F401 (fixture: a fresh database against that Redis)
    wait_all_handled,
    writer,
)
from tests.e2e.procs import OzzyProcess
from tests.integration.helpers import scalar, wait_until
from tests.servers import free_port, kill_redis

RECURRING_MODULES = '["tests.handlers", "tests.recurring_jobs"]'
LOAN_MODULES = '["workers.handlers"]'

#: Deadlines for outcomes, far above a normal run: how fast is not what these tests measure.
OUTCOME_DEADLINE_S = 120


# --- processes ----------------------------------------------------------------------------------


def start(settings, command: list[str], name: str, **extra: str) -> OzzyProcess:  # type: ignore[no-untyped-def]
    return OzzyProcess(command, fault_env(settings, OZZY_NODE_NAME=name, **extra))


def stop_all(procs: list[OzzyProcess], failing: bool) -> dict[str, int | None]:
    """SIGTERM every process still running (SIGKILL if it will not stop), drop its log, and show the
    output of those that failed (of all of them when the test is failing). Returns the exit codes."""
    codes: dict[str, int | None] = {}
    for i, p in enumerate(procs, 1):
        p.terminate(timeout=30)
        name = " ".join(p.args)
        codes[f"{i}:{p.args[0]}"] = p.proc.returncode
        if failing or p.proc.returncode not in (0, -signal.SIGKILL):
            sys.stderr.write(f"\n----- ozzy {name} exited {p.proc.returncode} -----\n{p.output()[-6000:]}\n")
        Path(p.log.name).unlink(missing_ok=True)
    return codes


def live_nodes(runtime, kind: str) -> int:  # type: ignore[no-untyped-def]
    return scalar(runtime, "SELECT count(*) FROM ozzy_nodes WHERE kind = :k AND stopped_at IS NULL", k=kind)


def relay_stats(runtime, relays: list[OzzyProcess]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Each relay's last reported counters (timers fired, drains by timer), in the order given."""
    with runtime.engine.connect() as conn:
        rows = {pid: (fired, by_timer) for pid, fired, by_timer in conn.exec_driver_sql(
            "SELECT pid, info->'relay'->>'timers_fired', info->'relay'->>'drains_by_timer'"
            " FROM ozzy_nodes WHERE kind = 'relay'").all()}
    return {f"relay-{i}": dict(zip(("timers_fired", "drains_by_timer"), rows.get(p.proc.pid, (None, None))))
            for i, p in enumerate(relays, 1)}


# --- scheduled accounts -------------------------------------------------------------------------


def schedule_openings(runtime, n: int, prefix: str, first_s: float, spread_s: float,  # type: ignore[no-untyped-def]
                      per_commit: int = 25) -> list[uuid.UUID]:
    """Create ``n`` accounts (no event) and schedule each one's ``AccountOpened`` for later: due from
    ``first_s`` seconds from now, evenly over ``spread_s`` seconds. Returns the scheduled event ids."""
    base = datetime.now(timezone.utc) + timedelta(seconds=first_s)
    ids: list[uuid.UUID] = []
    for start_at in range(0, n, per_commit):
        with runtime.unit_of_work() as uow:
            for i in range(start_at, min(n, start_at + per_commit)):
                account = Account(id=uuid.uuid4(), owner=f"{prefix}-{i}", balance=Decimal("0"))
                uow.add(account)
                due = base + timedelta(seconds=spread_s * i / max(1, n - 1))
                ids.append(uow.schedule(AccountOpened(account_id=account.id, owner=account.owner), at=due))
            uow.commit()
    return ids


def scheduled_states(runtime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT status, count(*) FROM ozzy_scheduled GROUP BY status").all())


def fired(runtime) -> int:  # type: ignore[no-untyped-def]
    return scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'fired'")


def assert_each_fired_once_into_the_log(runtime, ids: list[uuid.UUID]) -> None:  # type: ignore[no-untyped-def]
    """Every scheduled row fired, and the event log holds each scheduled event exactly once (with
    the id it was scheduled under), and no other opening."""
    assert scheduled_states(runtime) == {"fired": len(ids)}
    with runtime.engine.connect() as conn:
        logged = conn.exec_driver_sql(
            "SELECT event_id, count(*) FROM ozzy_outbox WHERE event_type = 'test.account_opened' GROUP BY event_id"
        ).all()
        unfired_in_log = conn.exec_driver_sql(
            "SELECT count(*) FROM ozzy_scheduled s JOIN ozzy_outbox o USING (event_id)"
            " WHERE s.status <> 'fired' OR s.fired_at IS NULL").scalar()
    assert sorted(str(e) for e, _ in logged) == sorted(str(i) for i in ids)
    assert {c for _, c in logged} == {1}
    assert unfired_in_log == 0


def lateness(runtime, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """fired_at - due_at of the rows fired (in [since, until) when given): p50 / p99 / max in ms."""
    with runtime.engine.connect() as conn:
        n, p50, p99, worst = conn.exec_driver_sql(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY s),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s)"
            " FROM (SELECT extract(epoch FROM fired_at - due_at) * 1000 AS s FROM ozzy_scheduled"
            "  WHERE status = 'fired' AND fired_at >= coalesce(%(since)s, '-infinity'::timestamptz)"
            "  AND fired_at < coalesce(%(until)s, 'infinity'::timestamptz)) t",
            {"since": since, "until": until}).one()
    if not n:
        return {"fired": 0}
    return {"fired": n, "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "max_ms": round(float(worst), 1)}


# --- 1. timeouts over two relays, one SIGKILLed --------------------------------------------------


@pytest.mark.fault
def test_scheduled_events_fire_once_with_two_relays_while_one_is_sigkilled(settings, redis_server) -> None:
    n = 300
    w = writer(settings)
    relays = [start(settings, ["relay"], f"relay-{i}") for i in (1, 2)]
    worker = start(settings, ["worker"], "worker-1")
    procs = [*relays, worker]
    failing = True
    try:
        wait_until(lambda: live_nodes(w, "relay") == 2 and live_nodes(w, "worker") == 1, timeout=60)
        # Given 300 accounts whose opening is scheduled over the next few seconds
        ids = schedule_openings(w, n, "timer", first_s=3.0, spread_s=5.0)
        # (on a loaded machine the first few may already be due, and fired, by the time this reads)
        states = scheduled_states(w)
        assert set(states) <= {"scheduled", "fired"} and sum(states.values()) == n and states.get("scheduled", 0) > n // 2
        # When one relay is SIGKILLed while the timers are firing
        wait_until(lambda: fired(w) >= 90, timeout=OUTCOME_DEADLINE_S, interval=0.01)
        waiting_at_kill = n - fired(w)
        relays[0].kill()
        assert relays[0].proc.returncode == -signal.SIGKILL
        fired_at_kill = n - waiting_at_kill
        assert waiting_at_kill > 0, "every timer had fired before the kill: nothing was at stake"
        # Then every row fires, enters the log once, and both handlers run once per event
        wait_until(lambda: fired(w) == n, timeout=OUTCOME_DEADLINE_S, interval=0.1)
        wait_all_handled(w, n, timeout=OUTCOME_DEADLINE_S)
        final = assert_delivered_exactly_once(w, n)
        assert_each_fired_once_into_the_log(w, ids)
        assert worker.proc.poll() is None and relays[1].proc.poll() is None
        late = lateness(w)
        stats = relay_stats(w, relays)
        failing = False
    finally:
        stop_all(procs, failing)
        w.close()
    report("timers_two_relays_one_sigkilled", scheduled=n, fired_before_kill=fired_at_kill,
           waiting_at_kill=waiting_at_kill, lateness=late, relays=stats, **final)


# --- 2. Redis restarted empty and a relay restart ----------------------------------------------


@pytest.mark.fault
def test_scheduled_events_survive_redis_restarted_empty_and_a_relay_restart(settings, redis_server) -> None:
    w = writer(settings)
    relay = start(settings, ["relay"], "relay-1")
    worker = start(settings, ["worker"], "worker-1")
    procs = [relay, worker]
    failing = True
    try:
        wait_until(lambda: live_nodes(w, "relay") == 1 and live_nodes(w, "worker") == 1, timeout=60)
        # Given 100 events scheduled a few seconds ahead
        ids = schedule_openings(w, 100, "before", first_s=3.0, spread_s=6.0)
        time.sleep(1)
        # When Redis is SIGKILLed (no persistence) ...
        kill_redis(redis_server)
        redis_killed = datetime.now(timezone.utc)
        # ... 20 more are scheduled while it is down (their commit's wake-up is lost) ...
        ids += schedule_openings(w, 20, "while-down", first_s=2.0, spread_s=2.0)
        time.sleep(3)
        fired_while_down = fired(w)
        undispatched_while_down = scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL")
        # ... an empty Redis comes back on the same port, and the relay is restarted
        redis_server.start()
        redis_back = datetime.now(timezone.utc)
        time.sleep(1)
        relay_exit = relay.terminate()
        relay_stopped = datetime.now(timezone.utc)
        relay = start(settings, ["relay"], "relay-2")
        procs.append(relay)
        restarted = time.monotonic()
        n = len(ids)
        # Then every scheduled event fires once and both its handlers run once
        wait_until(lambda: fired(w) == n, timeout=OUTCOME_DEADLINE_S, interval=0.1)
        wait_all_handled(w, n, timeout=OUTCOME_DEADLINE_S)
        recovery = time.monotonic() - restarted
        final = assert_delivered_exactly_once(w, n)
        assert_each_fired_once_into_the_log(w, ids)
        assert worker.proc.poll() is None and relay.proc.poll() is None
        late = {"before_redis_killed": lateness(w, until=redis_killed),
                "redis_down": lateness(w, redis_killed, redis_back),
                "redis_back_first_relay": lateness(w, redis_back, relay_stopped),
                "after_relay_restart": lateness(w, relay_stopped)}
        failing = False
    finally:
        stop_all(procs, failing)
        w.close()
    report("timers_redis_restarted_empty_and_relay_restart", scheduled=n, fired_while_redis_down=fired_while_down,
           undispatched_while_redis_down=undispatched_while_down, first_relay_exit_code=relay_exit,
           all_handled_after_relay_restart_s=round(recovery, 2), lateness=late, **final)


# --- 3. a recurring job over two relays ----------------------------------------------------------


def ticks(runtime) -> list[tuple[datetime, str, Any]]:  # type: ignore[no-untyped-def]
    """The job's occurrences in the event log: (at, event id, dispatched_at), by time."""
    with runtime.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT payload->>'at', event_id::text, dispatched_at FROM ozzy_outbox WHERE event_type = 'e2e.tick'").all()
    return sorted((datetime.fromisoformat(at), event_id, dispatched) for at, event_id, dispatched in rows)


def tick_effects(runtime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql(
            "SELECT event_key, count(*) FROM test_side_effects WHERE handler = 'tick' GROUP BY event_key").all())


@pytest.mark.fault
def test_a_recurring_job_over_two_relays_one_sigkilled_produces_each_occurrence_once(settings, redis_server) -> None:
    w = writer(settings)
    modules = {"OZZY_HANDLER_MODULES": RECURRING_MODULES}
    relays = [start(settings, ["relay"], f"relay-{i}", **modules) for i in (1, 2)]
    worker = start(settings, ["worker"], "worker-1", **modules)
    procs = [*relays, worker]
    failing = True
    try:
        wait_until(lambda: live_nodes(w, "relay") == 2 and live_nodes(w, "worker") == 1, timeout=60)
        # Given two relays keeping a job that ticks every second
        wait_until(lambda: ticks(w), timeout=OUTCOME_DEADLINE_S, interval=0.05)
        time.sleep(3)
        # When one of them is SIGKILLed midway
        relays[0].kill()
        assert relays[0].proc.returncode == -signal.SIGKILL
        at_kill = len(ticks(w))
        time.sleep(3)
        # and the other one is stopped after a few more seconds
        survivor_exit = relays[1].terminate()
        stopped_ticks = ticks(w)
        assert len(stopped_ticks) > at_kill, "no occurrence after the kill: the survivor did not take over"
        # Then each occurrence is handled once
        wait_until(lambda: len(tick_effects(w)) >= len(stopped_ticks), timeout=OUTCOME_DEADLINE_S, interval=0.1)
        time.sleep(1.5)  # a duplicate, if any, would land now
        seen = ticks(w)
        effects = tick_effects(w)
        with w.engine.connect() as conn:
            scheduled = conn.exec_driver_sql(
                "SELECT status, count(*) FROM ozzy_scheduled WHERE key = 'recurring:e2e.every_second' GROUP BY status"
            ).all()
            fired_ids = sorted(r[0] for r in conn.exec_driver_sql(
                "SELECT event_id::text FROM ozzy_scheduled WHERE key = 'recurring:e2e.every_second' AND status = 'fired'"))
            deliveries = dict(conn.exec_driver_sql(
                "SELECT status, count(*) FROM ozzy_deliveries WHERE handler = 'e2e.tick_recorded' GROUP BY status").all())
        times = [at for at, _, _ in seen]
        gaps = [(a.isoformat(), b.isoformat()) for a, b in zip(times, times[1:]) if b - a != timedelta(seconds=1)]
        # the log: consecutive whole seconds, none doubled, none skipped after the first, all dispatched
        assert seen == stopped_ticks, "an occurrence entered the log after every relay had stopped"
        assert len(set(times)) == len(times), f"an occurrence is in the log twice: {times}"
        assert all(at.microsecond == 0 for at in times), times
        assert not gaps, f"occurrences skipped between {gaps}"
        assert all(dispatched is not None for _, _, dispatched in seen)
        # the scheduled rows: each logged occurrence fired once, and exactly the next one waits
        assert fired_ids == sorted(event_id for _, event_id, _ in seen)
        assert dict(scheduled) == {"fired": len(seen), "scheduled": 1}
        # the handler: once per occurrence
        assert effects == {at.isoformat(): 1 for at in times}
        assert deliveries == {"done": len(seen)}
        assert worker.proc.poll() is None
        stats = relay_stats(w, relays)
        failing = False
    finally:
        codes = stop_all(procs, failing)
        w.close()
    report("recurring_two_relays_one_sigkilled", occurrences=len(seen), before_kill=at_kill,
           first=times[0].isoformat(), last=times[-1].isoformat(), survivor_exit_code=survivor_exit,
           relays=stats, exit_codes=codes)


# --- 4. the loan offer saga over HTTP ------------------------------------------------------------


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _healthy(base: str) -> bool:
    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False


def approvable(count: int, amount: Decimal = Decimal("1000")) -> list[dict[str, Any]]:
    """Applications the documented credit rule approves."""
    found: list[dict[str, Any]] = []
    i = 0
    while len(found) < count:
        email = f"offer{i}@example.com"
        if decide(credit_score(email, amount), amount)[0]:
            found.append({"applicant_name": f"Offer {i}", "email": email, "amount": int(amount)})
        i += 1
    return found


def test_a_loan_offer_is_accepted_in_time_or_expires_once_end_to_end(settings, redis_server) -> None:
    ttl = 3
    w = writer(settings)
    with w.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery")
        _, token = create_token(session, user, "offers-test")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    modules = {"OZZY_HANDLER_MODULES": LOAN_MODULES}
    procs = [start(settings, ["web", "--host", "127.0.0.1"], "web-1", PORT=str(port), **modules),
             start(settings, ["relay"], "relay-1", **modules), start(settings, ["worker"], "worker-1", **modules)]
    failing = True
    try:
        wait_until(lambda: _healthy(base), timeout=60)
        wait_until(lambda: live_nodes(w, "relay") == 1 and live_nodes(w, "worker") == 1, timeout=60)
        # Given offers that stay open 3 seconds (set through the API; the worker's cache has it
        # once its settings listener has passed the change event in the log)
        status, body = call("PUT", f"{base}/api/settings/loans.offer_ttl_seconds", {"value": ttl}, token)
        assert status == 200, body
        change_seq = wait_until(lambda: scalar(
            w, "SELECT max(dispatch_seq) FROM ozzy_outbox WHERE event_type = 'ozzy.setting_changed'"
               " AND payload->>'key' = 'loans.offer_ttl_seconds' AND dispatch_seq IS NOT NULL"), timeout=60)
        wait_until(lambda: scalar(
            w, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'worker' AND stopped_at IS NULL AND"
               " (info->'listeners'->'positions'->>'ozzy.settings_cache')::bigint >= :s", s=change_seq) == 1,
            timeout=60)
        # and two approvable applications
        taken, lapsed = approvable(2)
        responses = [call("POST", f"{base}/loan-applications", body) for body in (taken, lapsed)]
        assert [s for s, _ in responses] == [201, 201], responses
        taken_id, lapsed_id = (b["id"] for _, b in responses)

        def view(application_id: str) -> dict[str, Any]:
            status, body = call("GET", f"{base}/loan-applications/{application_id}")
            assert status == 200, body
            return body

        # When the first is accepted while its offer is open (once the saga waits on its deadline,
        # so that accepting must cancel a waiting timer)
        offer = wait_until(lambda: (v := view(taken_id))["status"] == "approved" and v, timeout=OUTCOME_DEADLINE_S,
                           interval=0.02)
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'"
                                     " AND payload->>'application_id' = :a", a=taken_id) == 1,
                   timeout=OUTCOME_DEADLINE_S, interval=0.02)
        status, body = call("POST", f"{base}/loan-applications/{taken_id}/accept")
        accepted_at = datetime.now(timezone.utc)
        assert (status, body) == (200, {"id": taken_id, "status": "accepted"})
        assert accepted_at < datetime.fromisoformat(offer["offer_expires_at"]), "accepted after the deadline"
        # and the second is left to lapse
        expired = wait_until(
            lambda: (v := view(lapsed_id))["status"] == "expired" and len(v["notifications"]) >= 2 and v,
            timeout=OUTCOME_DEADLINE_S, interval=0.1)
        # (past the accepted offer's own deadline too, and time for a duplicate to land)
        deadline = datetime.fromisoformat(offer["offer_expires_at"])
        while datetime.now(timezone.utc) < deadline + timedelta(seconds=2):
            time.sleep(0.1)
        time.sleep(1.5)
        taken_view, lapsed_view = view(taken_id), view(lapsed_id)
        # Then the accepted one stays accepted with only its approval notification ...
        assert taken_view["status"] == "accepted"
        assert [n["kind"] for n in taken_view["notifications"]] == ["approved"]
        # ... the other expired, with exactly one more notification
        assert lapsed_view["status"] == "expired"
        assert [n["kind"] for n in lapsed_view["notifications"]] == ["approved", "offer_expired"]
        # both offers were open for the TTL set through the API
        for v in (taken_view, lapsed_view):
            opened = datetime.fromisoformat(v["decided_at"])
            assert datetime.fromisoformat(v["offer_expires_at"]) - opened == timedelta(seconds=ttl), v
        # accepting the lapsed offer now conflicts; accepting again conflicts; an unknown id is 404
        assert call("POST", f"{base}/loan-applications/{lapsed_id}/accept")[0] == 409
        assert call("POST", f"{base}/loan-applications/{taken_id}/accept")[0] == 409
        assert call("POST", f"{base}/loan-applications/{uuid.uuid4()}/accept")[0] == 404
        assert view(lapsed_id)["status"] == "expired" and view(taken_id)["status"] == "accepted"
        # the deadlines: the accepted one was cancelled, the lapsed one fired once into the log
        with w.engine.connect() as conn:
            deadlines = dict(conn.exec_driver_sql(
                "SELECT payload->>'application_id', status FROM ozzy_scheduled"
                " WHERE event_type = 'loans.offer_deadline_reached'").all())
            logged = conn.exec_driver_sql(
                "SELECT event_type, payload->>'application_id', count(*) FROM ozzy_outbox WHERE event_type IN"
                " ('loans.offer_deadline_reached', 'loans.offer_expired', 'loans.offer_accepted') GROUP BY 1, 2").all()
            sagas = dict(conn.exec_driver_sql(
                "SELECT instance_key, status FROM ozzy_sagas WHERE saga_type = 'loans.offer'").all())
            unfinished = conn.exec_driver_sql(
                "SELECT handler, status, count(*) FROM ozzy_deliveries WHERE status <> 'done' GROUP BY 1, 2").all()
        assert deadlines == {lapsed_id: "fired", taken_id: "cancelled"}
        assert sorted(logged) == sorted([("loans.offer_deadline_reached", lapsed_id, 1),
                                         ("loans.offer_expired", lapsed_id, 1),
                                         ("loans.offer_accepted", taken_id, 1)])
        assert sagas == {taken_id: "completed", lapsed_id: "completed"}
        assert unfinished == []
        expired_after = (datetime.fromisoformat(expired["notifications"][-1]["sent_at"])
                         - datetime.fromisoformat(expired["offer_expires_at"])).total_seconds()
        failing = False
    finally:
        codes = stop_all(procs, failing)
        w.close()
    report("loan_offer_saga_http", ttl_s=ttl, expiry_notified_after_deadline_s=round(expired_after, 3),
           exit_codes=codes)


# --- 5. timers while an operator has paused the relay --------------------------------------------


def relay_loop_counters(runtime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The live relay's drain-loop iterations by cause, from its last heartbeat (every second)."""
    with runtime.engine.connect() as conn:
        info = conn.exec_driver_sql(
            "SELECT info->'relay' FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL").scalar_one()
    return {k: int(info[k]) for k in ("drains_by_timer", "drains_by_poll", "drains_by_notify", "timers_fired")}


@pytest.mark.fault
def test_a_paused_relay_keeps_due_timers_waiting_without_spinning_and_fires_them_once_on_resume(settings, redis_server) -> None:
    n = 20
    paused_for = 4.0
    w = writer(settings)
    with w.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery")
        _, token = create_token(session, user, "pause-test")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [start(settings, ["web", "--host", "127.0.0.1"], "web-1", PORT=str(port)),
             start(settings, ["relay"], "relay-1"), start(settings, ["worker"], "worker-1")]
    failing = True
    try:
        wait_until(lambda: _healthy(base), timeout=60)
        wait_until(lambda: live_nodes(w, "relay") == 1 and live_nodes(w, "worker") == 1, timeout=60)
        # Given an operator paused the relay (events and timers wait)
        assert call("POST", f"{base}/api/relay/pause", {}, token)[0] == 202
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_nodes, jsonb_array_elements(info->'commands') c"
                                     " WHERE kind = 'relay' AND stopped_at IS NULL AND c->>'command' = 'pause_relay'"),
                   timeout=30)
        # When events fall due while it is paused
        ids = schedule_openings(w, n, "paused", first_s=0.2, spread_s=0.3)
        time.sleep(1.5)  # all due, and a heartbeat since
        before = relay_loop_counters(w)
        time.sleep(paused_for)
        after = relay_loop_counters(w)
        # Then none fires while paused ...
        assert scheduled_states(w) == {"scheduled": n}
        loops = {k: after[k] - before[k] for k in before}
        # When the relay is resumed, every one fires once and is handled once
        assert call("POST", f"{base}/api/relay/resume", {}, token)[0] == 202
        wait_until(lambda: fired(w) == n, timeout=OUTCOME_DEADLINE_S, interval=0.1)
        wait_all_handled(w, n, timeout=OUTCOME_DEADLINE_S)
        final = assert_delivered_exactly_once(w, n)
        assert_each_fired_once_into_the_log(w, ids)
        # ... and, while paused, the relay waited for its poll (once a second) and wake-ups instead of
        # running its drain loop over and over on timers it is not allowed to fire: a count of loop
        # iterations (a busy loop makes hundreds a second), not a speed threshold
        assert loops["drains_by_timer"] <= 10 * paused_for, f"the paused relay spun on due timers: {loops}"
        failing = False
    finally:
        codes = stop_all(procs, failing)
        w.close()
    report("timers_while_relay_paused", paused_s=paused_for, loop_iterations_while_paused=loops, exit_codes=codes,
           **final)
