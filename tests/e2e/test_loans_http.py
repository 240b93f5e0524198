"""End to end through HTTP only: real web, relay and worker processes run the loan example."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from tests.e2e.procs import ozzy_processes, process_env
from tests.integration.helpers import wait_until
from tests.servers import free_port

#: A deadline for the outcome (every application reaches its final state), far above a normal run;
#: how fast the pipeline is goes to bench/latency.py (``loans_http``), not here.
COMPLETION_DEADLINE_S = 180


def predicted_status(email: str, amount: Decimal) -> tuple[int, str]:
    """The rule as the model's docstring documents it, written out independently."""
    digest = hashlib.sha256(f"{email.lower()}|{amount:.2f}".encode()).hexdigest()
    score = 300 + int(digest[:8], 16) % 551
    return score, "approved" if score >= 600 and amount <= score * 100 else "rejected"


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_hundred_applications_reach_their_predicted_status_with_one_notification(clean_db) -> None:
    port = free_port()
    env = process_env(clean_db, OZZY_HANDLER_MODULES='["workers.handlers"]', PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    with ozzy_processes(env, ["web", "--host", "127.0.0.1"], ["relay"], ["worker"]):
        wait_until(lambda: _healthy(base), timeout=30)
        applications = [
            {"applicant_name": f"Applicant {i}", "email": f"person{i}@example.com", "amount": 1000 + 397 * i}
            for i in range(200)
        ]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda body: call("POST", f"{base}/loan-applications", body), applications))
        assert [status for status, _ in responses] == [201] * 200
        ids = [body["id"] for _, body in responses]

        def final_views() -> list[dict] | None:
            views = [call("GET", f"{base}/loan-applications/{i}")[1] for i in ids]
            return views if all(v["status"] in ("approved", "rejected") and v["notifications"] for v in views) else None

        views = wait_until(final_views, timeout=COMPLETION_DEADLINE_S, interval=0.5)
        elapsed = time.monotonic() - started
        time.sleep(1)  # a duplicate notification, if any, would land now
        for body, view in zip(applications, [call("GET", f"{base}/loan-applications/{i}")[1] for i in ids]):
            score, status = predicted_status(body["email"], Decimal(body["amount"]))
            assert (view["credit_score"], view["status"]) == (score, status), view
            assert [n["kind"] for n in view["notifications"]] == [status]
        statuses = {v["status"] for v in views}
        assert statuses == {"approved", "rejected"}, "the sample should exercise both outcomes"
        assert len(set(ids)) == 200
        # The relays' loans.stats projection counted them (summed over the UTC days they fell on)
        outcomes = {s: sum(1 for v in views if v["status"] == s) for s in ("approved", "rejected")}

        def stats_total() -> dict | None:
            days = call("GET", f"{base}/loan-stats")[1]["days"]
            total = {k: sum(d[k] for d in days.values()) for k in ("submitted", "approved", "rejected")}
            return total if total == {"submitted": 200, **outcomes} else None

        wait_until(stats_total, timeout=30, interval=0.5)
        print(f"200 applications completed in {elapsed:.1f}s")


def _healthy(base: str) -> bool:
    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False
