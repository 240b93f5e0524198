"""The cluster: every process hears cluster-wide events, in order, once; flags reach every process."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import redis

from shared.ops.accounts import create_token, create_user
from tests.e2e.faults import fault_env, open_accounts, redis_server, report, settings, writer  # noqa: F401 (fixtures)
from tests.e2e.procs import OzzyProcess, ozzy_processes
from tests.integration.helpers import scalar, wait_until
from tests.servers import free_port

MODULES = '["tests.handlers", "tests.cluster_listeners"]'
NODES = ("web-1", "relay-1", "worker-1")



class PubSubCutter:
    """A thread that keeps killing every pub/sub connection until stopped: the fast channel is down.
    ``killed`` counts the connections it killed, so a test can tell the cut was real."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.killed = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pubsub-cutter", daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            while not self._stop.is_set():
                self.killed += client.client_kill_filter(_type="pubsub")
                self._stop.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        finally:
            client.close()

    def __enter__(self) -> PubSubCutter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the pub/sub cutter did not stop"
        if self.error is not None and exc_info[0] is None:
            raise AssertionError(f"the pub/sub cutter failed: {self.error!r}")


def stop_all(procs: list[OzzyProcess]) -> None:
    """SIGTERM each process (SIGKILL if it will not stop) and drop its log; show the output of those
    that did not exit 0 (or all, when called while a test is failing)."""
    failing = sys.exc_info()[0] is not None
    for p in procs:
        p.terminate(timeout=30)
        if failing or p.proc.returncode not in (0, -signal.SIGKILL):
            sys.stderr.write(f"\n----- ozzy {' '.join(p.args)} exited {p.proc.returncode} -----\n{p.output()[-4000:]}\n")
        Path(p.log.name).unlink(missing_ok=True)


def start_node(settings, name: str, command: list[str], **extra: str) -> OzzyProcess:
    return OzzyProcess(command, fault_env(settings, OZZY_HANDLER_MODULES=MODULES, OZZY_NODE_NAME=name, **extra))


def sightings(runtime) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    with runtime.engine.connect() as conn:
        for node, event_id in conn.exec_driver_sql("SELECT node, event_id::text FROM test_sightings WHERE detail IS NULL ORDER BY id"):
            seen[node].append(event_id)
    return seen


def test_three_processes_see_every_event_once_and_in_order_through_a_pubsub_cut_and_a_restart(settings, redis_server) -> None:
    w = writer(settings)
    port = free_port()
    procs = [start_node(settings, "web-1", ["web", "--host", "127.0.0.1"], PORT=str(port)),
             start_node(settings, "relay-1", ["relay"]), start_node(settings, "worker-1", ["worker"])]
    try:
        wait_until(lambda: scalar(w, "SELECT count(DISTINCT kind) FROM ozzy_nodes WHERE stopped_at IS NULL") == 3, timeout=60)
        open_accounts(w, 100, "before")
        with PubSubCutter(redis_server.url) as cut:  # pub/sub cut while 100 more are written
            open_accounts(w, 100, "during")
        assert cut.killed >= 1, "the cut killed no pub/sub connection"
        # The worker stops (SIGTERM) and misses 50 events; restarted, it resumes from its checkpoint
        stopped = procs[2]
        assert stopped.terminate() == 0, stopped.output()
        stop_all([stopped])
        open_accounts(w, 50, "while-down")
        procs[2] = start_node(settings, "worker-1", ["worker"])
        open_accounts(w, 50, "after")
        wait_until(lambda: all(len(sightings(w).get(n, [])) >= 300 for n in NODES), timeout=90)
        time.sleep(1.5)  # a duplicate, if any, would land now
        with w.engine.connect() as conn:
            in_log_order = [r[0] for r in conn.exec_driver_sql(
                "SELECT aggregate_id FROM ozzy_outbox WHERE event_type = 'test.account_opened' ORDER BY dispatch_seq")]
        seen = sightings(w)
        for node in NODES:
            assert seen[node] == in_log_order, f"{node} saw {len(seen[node])} events, or out of order"
        report("cluster_listeners", processes=3, events=len(in_log_order), pubsub_cut_events=100,
               pubsub_connections_killed=cut.killed, missed_while_stopped=50,
               per_node={n: len(seen[n]) for n in NODES})
    finally:
        stop_all(procs)
        w.close()


def test_a_flag_flipped_through_the_api_reaches_every_process_by_pubsub_and_by_poll_without_it(settings, redis_server) -> None:
    w = writer(settings)
    with w.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery")
        _, token = create_token(session, user, "cluster-test")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [start_node(settings, "web-1", ["web", "--host", "127.0.0.1"], PORT=str(port)),
             start_node(settings, "relay-1", ["relay"]), start_node(settings, "worker-1", ["worker"])]
    try:
        wait_until(lambda: scalar(w, "SELECT count(DISTINCT kind) FROM ozzy_nodes WHERE stopped_at IS NULL") == 3, timeout=60)
        wait_until(lambda: _listeners_connected(w) == 3, timeout=30)

        def flip(enabled: bool, name: str = "checkout.v2") -> dict[str, float]:
            """Switch the flag through the API; every process must see the new value (a generous
            deadline: how fast is measured by bench/latency.py)."""
            status, _ = _put_flag(base, token, enabled, name)
            assert status == 200
            expected = f"{name}={enabled}"
            wait_until(lambda: _flag_sightings(w, expected) == 3, timeout=30, interval=0.01)
            return _latencies(w, expected, name)

        flip(True, "warm-up")  # the test listener opens its own database connection on first use
        fast = flip(True)
        # Without pub/sub (every subscription killed as soon as it is made), the processes still see
        # the change: the relay finds the event by its poll, and each process reads the log by its own
        with PubSubCutter(redis_server.url) as cut:
            time.sleep(0.3)
            slow = flip(False)
        assert cut.killed >= 1, "the cut killed no pub/sub connection"
        report("flag_propagation", fast_channel_ms={k: round(v * 1000, 1) for k, v in fast.items()},
               pubsub_cut_ms={k: round(v * 1000, 1) for k, v in slow.items()}, pubsub_connections_killed=cut.killed)
        assert set(fast) == set(slow) == set(NODES)
    finally:
        stop_all(procs)
        w.close()


def _put_flag(base: str, token: str, enabled: bool, name: str):  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    request = urllib.request.Request(f"{base}/api/flags/{name}", json.dumps({"enabled": enabled}).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                                     method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _flag_sightings(runtime, detail: str) -> int:
    return scalar(runtime, "SELECT count(DISTINCT node) FROM test_sightings WHERE detail = :d", d=detail)


def _latencies(runtime, detail: str, name: str) -> dict[str, float]:
    """Per process: from the change event's time in the log to the process seeing the new value."""
    enabled = detail.endswith("True")
    with runtime.engine.connect() as conn:
        occurred = conn.exec_driver_sql(
            "SELECT occurred_at FROM ozzy_outbox WHERE event_type = 'ozzy.flag_changed'"
            " AND payload->>'name' = %s AND (payload->>'enabled')::boolean = %s ORDER BY id DESC LIMIT 1",
            (name, enabled)).scalar()
        rows = conn.exec_driver_sql("SELECT node, seen_at FROM test_sightings WHERE detail = %s", (detail,)).all()
    return {node: (seen - occurred).total_seconds() for node, seen in rows}


def _listeners_connected(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_nodes WHERE stopped_at IS NULL"
                           " AND info->'listeners'->'fast_channel'->>'state' = 'connected'")




def test_housekeeping_runs_on_one_relay_and_passes_to_the_other_after_a_sigkill(settings) -> None:
    w = writer(settings)
    relays = [OzzyProcess(["relay"], fault_env(settings, OZZY_NODE_NAME=f"relay-{i}")) for i in (1, 2)]
    try:
        wait_until(lambda: _leaders(w) == 1 and _relays(w) == 2, timeout=60)
        time.sleep(2)
        assert _leaders(w) == 1, "exactly one relay holds the housekeeping lease"
        leader_pid = scalar(w, "SELECT pid FROM ozzy_nodes WHERE kind = 'relay' AND (info->>'leader')::boolean")
        leader = next(p for p in relays if p.proc.pid == leader_pid)
        leader.kill()
        assert leader.proc.returncode == -9
        killed = time.monotonic()
        # The lease passes to the survivor (a generous deadline: how fast is measured by
        # bench/latency.py)
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND pid <> :p"
                                     " AND (info->>'leader')::boolean", p=leader_pid) == 1, timeout=60, interval=0.1)
        takeover = time.monotonic() - killed
        # and the pipeline still works through the survivor
        open_accounts(w, 10, "after-takeover")
        with ozzy_processes(fault_env(settings), ["worker"]):
            wait_until(lambda: scalar(w, "SELECT count(*) FROM test_side_effects WHERE handler = 'audit'") == 10, timeout=60)
        report("singleton_lease_takeover", takeover_s=round(takeover, 2), sweep_interval_s=1)
    finally:
        stop_all(relays)
        w.close()


def _leaders(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL"
                           " AND (info->>'leader')::boolean")


def _relays(runtime) -> int:
    return scalar(runtime, "SELECT count(*) FROM ozzy_nodes WHERE kind = 'relay' AND stopped_at IS NULL")


def test_operators_pause_and_resume_a_handler_and_the_relay_and_stop_a_node(settings) -> None:
    w = writer(settings)
    with w.session_factory() as session:
        user = create_user(session, "ops", "correct horse battery", role="admin")  # stopping a node is admin-only
        _, token = create_token(session, user, "control-test")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [start_node(settings, "web-1", ["web", "--host", "127.0.0.1"], PORT=str(port)),
             start_node(settings, "relay-1", ["relay"]), start_node(settings, "worker-1", ["worker"])]

    def post(path: str) -> int:
        import urllib.request

        request = urllib.request.Request(f"{base}{path}", b"", {"Authorization": f"Bearer {token}"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def acked(kind: str, command: str) -> bool:
        return bool(scalar(w, "SELECT count(*) FROM ozzy_nodes, jsonb_array_elements(info->'commands') c"
                              " WHERE kind = :k AND stopped_at IS NULL AND c->>'command' = :c", k=kind, c=command))

    def effects(handler: str) -> int:
        return scalar(w, "SELECT count(*) FROM test_side_effects WHERE handler = :h", h=handler)

    try:
        wait_until(lambda: _listeners_connected(w) == 3, timeout=60)
        # Pause a handler: its messages wait, the other handler keeps working
        assert post("/api/handlers/test.audit/pause") == 202
        wait_until(lambda: acked("worker", "pause_handler"), timeout=10)
        open_accounts(w, 20, "paused")
        wait_until(lambda: effects("welcome") == 20, timeout=30)
        time.sleep(2)
        assert effects("audit") == 0
        assert scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE handler = 'test.audit' AND status = 'pending'") == 20
        assert post("/api/handlers/test.audit/resume") == 202
        wait_until(lambda: effects("audit") == 20, timeout=30)
        # Pause the relay: events wait in the outbox
        assert post("/api/relay/pause") == 202
        wait_until(lambda: acked("relay", "pause_relay"), timeout=10)
        open_accounts(w, 5, "relay-paused")
        time.sleep(2)
        assert scalar(w, "SELECT count(*) FROM ozzy_outbox WHERE dispatched_at IS NULL") == 5
        assert post("/api/relay/resume") == 202
        wait_until(lambda: effects("audit") == 25, timeout=30)
        time.sleep(1)
        assert (effects("welcome"), effects("audit")) == (25, 25)
        # Drain and stop the worker: it acknowledges, finishes, exits 0
        worker_id = scalar(w, "SELECT id::text FROM ozzy_nodes WHERE kind = 'worker' AND stopped_at IS NULL")
        assert post(f"/api/nodes/{worker_id}/stop") == 202
        procs[2].proc.wait(30)
        assert procs[2].proc.returncode == 0, procs[2].output()
        assert scalar(w, "SELECT stopped_at IS NOT NULL FROM ozzy_nodes WHERE id = CAST(:i AS uuid)", i=worker_id)
        report("control_commands", paused_handler_waited=20, relay_paused_events=5, worker_stopped_exit_code=0)
    finally:
        stop_all(procs)
        w.close()
