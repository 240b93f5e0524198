"""The back office in a real browser (Debian's Chromium driven by Playwright), against real web,
relay and worker processes: log in, read the dashboard, filter the event log, flip a flag, retry a
dead letter and see it succeed; ask to drain and stop a node, decline, then confirm. Screenshots
land in docs/img/."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.ops.accounts import create_user
from tests.e2e.faults import open_accounts, writer
from tests.e2e.procs import ROOT, ozzy_processes, process_env
from tests.integration.helpers import scalar, wait_until
from tests.servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: OZZY_SCREENSHOTS=1 refreshes the README's pictures; otherwise they go to a temporary folder.
DOCS_SHOTS = ROOT / "docs" / "img"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("OZZY_REQUIRE_BROWSER"),
    reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


def test_an_operator_logs_in_filters_events_flips_a_flag_and_retries_a_dead_letter(clean_db, browser, tmp_path) -> None:
    settings = clean_db
    shots = DOCS_SHOTS if os.environ.get("OZZY_SCREENSHOTS") == "1" else tmp_path
    w = writer(settings)
    with w.session_factory() as session:
        create_user(session, "operator", "a long passphrase")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(settings, PORT=str(port), OZZY_LOG_LEVEL="WARNING",
                      OZZY_HANDLER_MODULES='["tests.handlers", "tests.browser_handlers", "workers.handlers"]')
    with ozzy_processes(env, ["web", "--host", "127.0.0.1"], ["relay"], ["worker"]):
        wait_until(lambda: _healthy(base), timeout=60, interval=0.2)
        open_accounts(w, 12, "shown")
        # The gated handler fails permanently while the flag is off: one dead letter per account
        wait_until(lambda: scalar(w, "SELECT count(*) FROM ozzy_deliveries WHERE status = 'dead'") == 12, timeout=60)
        shots.mkdir(parents=True, exist_ok=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(15_000)

        # Log in (every back-office page sends a stranger to the login page first)
        page.goto(f"{base}/admin/")
        assert "/admin/login" in page.url
        page.fill("#username", "operator")
        page.fill("#password", "a long passphrase")
        page.click("#login")
        page.wait_for_selector("#summary")
        assert "browser.gated" in page.inner_text("#handlers")
        page.screenshot(path=str(tmp_path / "dashboard-fixtures.png"), full_page=True)

        # Filter the event log by type through the filter menu
        page.goto(f"{base}/admin/events/")
        page.click("text=Add Filter")
        page.click("a.filter:has-text('Type')")
        page.fill("input[name^='flt']", "test.deposit_audited")
        page.click("button:has-text('Apply')")
        page.wait_for_load_state()
        types = page.locator("td.col-event_type").all_inner_texts()
        assert types and set(t.strip() for t in types) == {"test.deposit_audited"}
        page.screenshot(path=str(tmp_path / "event-log-fixtures.png"), full_page=True)

        # Turn the flag on
        page.goto(f"{base}/admin/flags/new/")
        page.fill("#name", "browser.gate_open")
        page.check("#enabled")
        page.fill("#description", "lets the gated handler through")
        page.click("input[type=submit][value='Save']")
        page.wait_for_selector("text=browser.gate_open")
        assert scalar(w, "SELECT enabled FROM ozzy_flags WHERE name = 'browser.gate_open'") is True
        assert scalar(w, "SELECT metadata->>'actor' FROM ozzy_outbox WHERE event_type = 'ozzy.flag_changed'") == "user:operator"

        # Retry every dead letter from the dead-letter view, after the confirmation
        page.goto(f"{base}/admin/deadletters/")
        page.click("#retry-matching")
        assert "12 deliveries match" in page.inner_text("#retry-count")
        page.click("#confirm-retry")
        page.wait_for_selector("text=12 deliveries matching the filter enqueued again")
        wait_until(lambda: scalar(w, "SELECT count(*) FROM test_side_effects WHERE handler = 'gated'") == 12, timeout=60)

        # And the deliveries view, filtered to the gated handler, shows them done
        page.goto(f"{base}/admin/deliveries/")
        page.click("text=Add Filter")
        page.click("a.filter:has-text('Handler')")
        page.fill("input[name^='flt']", "browser.gated")
        page.click("button:has-text('Apply')")
        page.wait_for_load_state()
        handlers = {h.strip() for h in page.locator("td.col-handler").all_inner_texts()}
        statuses = [s.strip() for s in page.locator("td.col-status").all_inner_texts()]
        assert handlers == {"browser.gated"} and statuses == ["done"] * 12, (handlers, statuses)
        page.screenshot(path=str(tmp_path / "deliveries-fixtures.png"), full_page=True)
    w.close()


def test_drain_and_stop_asks_first_and_sends_nothing_when_the_operator_declines(clean_db, browser, tmp_path) -> None:
    settings = clean_db
    w = writer(settings)
    with w.session_factory() as session:
        create_user(session, "operator", "a long passphrase", role="admin")  # stopping nodes needs admin
        session.commit()
    # A worker node seen a moment ago (a row only: the command is recorded, no process acts on it)
    node_id = uuid.uuid4()
    with w.engine.begin() as conn:
        conn.execute(text("INSERT INTO ozzy_nodes (id, kind, host, pid, version) VALUES (:i, 'worker', 'host-b', 4242, 't')"),
                     {"i": node_id})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(settings, PORT=str(port), OZZY_LOG_LEVEL="WARNING")
    commands = "SELECT count(*) FROM ozzy_outbox WHERE event_type = 'ozzy.control_command'"
    with ozzy_processes(env, ["web", "--host", "127.0.0.1"]):
        wait_until(lambda: _healthy(base), timeout=60, interval=0.2)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(f"{base}/admin/login")
        page.fill("#username", "operator")
        page.fill("#password", "a long passphrase")
        page.click("#login")
        page.wait_for_selector("#summary")
        button = page.locator(f"button[data-command='drain_stop'][data-target='{node_id}']")
        assert button.inner_text().strip() == "Drain and stop"

        # The operator clicks "Drain and stop", reads the question naming the node, and declines
        asked: list[str] = []

        def decline(dialog) -> None:  # type: ignore[no-untyped-def]
            asked.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", decline)
        button.click()
        page.wait_for_timeout(500)  # a submitted form would have navigated by now
        assert asked and "worker on host-b (pid 4242)" in asked[0] and str(node_id) not in asked[0], asked
        assert page.url.rstrip("/").endswith("/admin") and scalar(w, commands) == 0
        assert scalar(w, "SELECT stopped_at FROM ozzy_nodes WHERE id = :i", i=node_id) is None

        # Then clicks again and confirms: the command for that node is recorded, with the operator
        page.once("dialog", lambda dialog: dialog.accept())
        button.click()
        page.wait_for_selector("text=Sent to the cluster: drain and stop the worker on host-b (pid 4242)")
        assert scalar(w, commands) == 1
        assert scalar(w, "SELECT payload->>'command' || ' ' || (payload->>'target') || ' ' || (metadata->>'actor')"
                         " FROM ozzy_outbox WHERE event_type = 'ozzy.control_command'") == \
            f"drain_stop {node_id} user:operator"
        page.screenshot(path=str(tmp_path / "drain-confirmed.png"), full_page=True)
    w.close()


def test_the_dashboard_updates_itself_under_demo_traffic_and_takes_the_readme_pictures(clean_db, browser, tmp_path) -> None:
    """The README's pictures: the loan example under the traffic ``ozzy dev --demo`` sends."""
    from shared.cli.dev import demo_loop

    settings = clean_db
    shots = DOCS_SHOTS if os.environ.get("OZZY_SCREENSHOTS") == "1" else tmp_path
    w = writer(settings)
    with w.session_factory() as session:
        create_user(session, "operator", "a long passphrase")
        session.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(settings, PORT=str(port), OZZY_LOG_LEVEL="WARNING", OZZY_NODE_HEARTBEAT="2",
                      OZZY_HANDLER_MODULES='["workers.handlers"]')
    stop = threading.Event()
    with ozzy_processes(env, ["web", "--host", "127.0.0.1"], ["relay"], ["worker"]):
        wait_until(lambda: _healthy(base), timeout=60, interval=0.2)
        threading.Thread(target=demo_loop, args=(base, stop), daemon=True).start()
        try:
            wait_until(lambda: scalar(w, "SELECT count(*) FROM loan_notifications") >= 3, timeout=60)
            shots.mkdir(parents=True, exist_ok=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(20_000)
            page.goto(f"{base}/admin/login")
            page.fill("#username", "operator")
            page.fill("#password", "a long passphrase")
            page.click("#login")
            page.wait_for_selector("#summary")
            first_seen = page.inner_text("#as-of")
            # The page updates itself: new figures arrive with no reload
            page.wait_for_function("(t) => document.getElementById('as-of').textContent !== t", arg=first_seen)
            page.wait_for_function("() => parseFloat(document.getElementById('events-per-second').textContent) > 0")
            page.wait_for_function(
                "() => !document.querySelector('tr[data-handler=\"loans.credit_check\"] [data-cell=\"p50\"]')"
                ".textContent.includes('\u2014')")
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
            assert page.inner_text("#fast-channel").strip() == "connected"
            assert "loans.credit_check" in page.inner_text("#handlers") and "browser." not in page.inner_text("#handlers")
            assert page.inner_text("#live-nodes").strip() == "3"
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            page.goto(f"{base}/admin/events/")
            page.wait_for_selector("td.col-event_type")
            assert "loans.application_submitted" in page.inner_text("body")
            page.screenshot(path=str(shots / "event-log.png"), full_page=True)
            page.goto(f"{base}/admin/deliveries/")
            page.wait_for_selector("td.col-handler")
            assert "loans.notify_" in page.inner_text("body")
            page.screenshot(path=str(shots / "deliveries.png"), full_page=True)
        finally:
            stop.set()
    w.close()


def _healthy(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
