"""Real ``ozzy web``, ``ozzy relay`` and ``ozzy worker`` processes with ``--metrics-port`` and
``OZZY_LOG_FORMAT=json``: scraped as Prometheus would, probed as Kubernetes would, their logs parsed
as a log search would."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from tests.e2e.faults import open_accounts, writer
from tests.e2e.procs import ozzy_processes, process_env
from tests.integration.helpers import scalar, wait_until
from tests.servers import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def value(metrics_text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus's text format (labels in any order)."""
    for line in metrics_text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_every_process_serves_metrics_health_and_json_logs(clean_db) -> None:
    settings = clean_db
    w = writer(settings)
    web_port, ports = free_port(), {kind: free_port() for kind in ("web", "relay", "worker")}
    env = process_env(settings, PORT=str(web_port), OZZY_LOG_FORMAT="json", OZZY_METRICS_DB_INTERVAL="1")
    base = {kind: f"http://127.0.0.1:{port}" for kind, port in ports.items()}
    n = 30
    with ozzy_processes(env, ["web", "--host", "127.0.0.1", "--metrics-port", str(ports["web"])],
                        ["relay", "--metrics-port", str(ports["relay"])],
                        ["worker", "--metrics-port", str(ports["worker"])]) as procs:
        # Given three processes, each ready once it started and PostgreSQL answers
        for kind in ports:
            wait_until(lambda: get(base[kind] + "/readyz")[0] == 200, timeout=60, interval=0.2)
            status, body = get(base[kind] + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok", (kind, body)
        # When 30 accounts are opened (each causes one more event) and a request reaches the web app
        open_accounts(w, n, "metrics")
        assert get(f"http://127.0.0.1:{web_port}/healthz")[0] == 200
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'done'") == 2 * n, timeout=60)

        # Then the worker's counts are exact
        def worker_count(handler: str) -> float | None:
            return value(get(base["worker"] + "/metrics")[1], "ozzy_handler_duration_seconds_count", handler=handler)

        wait_until(lambda: worker_count("test.audit") == n, timeout=10)
        metrics = get(base["worker"] + "/metrics")[1]
        assert worker_count("test.welcome") == n and worker_count("test.count_deposit") is None
        assert value(metrics, "ozzy_handler_failures_total", handler="test.welcome", kind="dead") == 0
        # the relay's too, with its fast channel up
        relay = get(base["relay"] + "/metrics")[1]
        assert value(relay, "ozzy_relay_dispatched_total") == 2 * n
        assert value(relay, "ozzy_fast_channel_up") == 1 and value(metrics, "ozzy_fast_channel_up") is None
        assert value(relay, "ozzy_relay_batch_seconds_count") >= 1
        assert value(relay, "ozzy_relay_drains_total", trigger="notify") >= 1
        # the web's, by route template
        web = get(base["web"] + "/metrics")[1]
        assert value(web, "ozzy_http_requests_total", route="/healthz", method="GET", status="200") >= 1
        # and exactly one process exports the gauges read from PostgreSQL
        scraped = [get(base[kind] + "/metrics")[1] for kind in ports]
        backlogs = [value(text, "ozzy_outbox_backlog") for text in scraped]
        assert sorted(b is not None for b in backlogs) == [False, False, True], backlogs
        wait_until(lambda: any(value(get(base[k] + "/metrics")[1], "ozzy_deliveries", handler="test.audit",
                                     status="pending") == 0 for k in ports), timeout=10)

        # The logs are one JSON object a line
        for proc in procs:
            records = [json.loads(line) for line in proc.output().splitlines() if line.strip()]
            assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    w.close()
