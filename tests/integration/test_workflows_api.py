"""Sagas and recurring jobs in /api and the back office."""

from __future__ import annotations

import uuid
from decimal import Decimal

from shared.testing.pipeline import run_until_idle
from shared.workflows.recurring import ensure_scheduled
from tests.domain import AccountOpened, DepositAudited
from tests.integration.test_back_office import (  # noqa: F401  (fixtures)
    app,
    bearer,
    csrf_token,
    https_client,
    logged_in,
    operator,
    runtime,
    token,
)
from tests.integration.helpers import make_runtime, scalar
from tests.integration.test_recurring import EVERY_SECOND
from tests.integration.test_sagas import Audits


def _run_audits(clean_db, n: int) -> tuple[object, list[uuid.UUID]]:
    rt = make_runtime(clean_db, handlers=[Audits])
    accounts = [uuid.uuid4() for _ in range(n)]
    with rt.unit_of_work() as uow:
        for account in accounts:
            uow.publish(AccountOpened(account_id=account, owner="x"))
        uow.commit()
    run_until_idle(rt)
    with rt.unit_of_work() as uow:  # once the instances exist (an earlier event would be ignored)
        uow.publish(DepositAudited(account_id=accounts[0], amount=Decimal(5)))
        uow.commit()
    run_until_idle(rt)
    rt.close()
    return rt, accounts


def test_the_api_lists_saga_instances_by_type_and_status_with_state_history_and_timeouts(
        clean_db, app, token) -> None:
    _, accounts = _run_audits(clean_db, 2)
    client = app.test_client()
    listed = client.get("/api/sagas?type=sagatest.audits&status=running", headers=bearer(token)).get_json()
    assert sorted(i["key"] for i in listed["items"]) == sorted(map(str, accounts))
    assert client.get("/api/sagas?status=completed", headers=bearer(token)).get_json()["items"] == []
    assert client.get("/api/sagas?status=nope", headers=bearer(token)).status_code == 400
    one = client.get(f"/api/sagas/sagatest.audits/{accounts[0]}", headers=bearer(token)).get_json()
    assert one["state"] == {"count": 1, "total": "5"} and one["steps"] == 2 and one["pending_timeouts"] == []
    assert [(h["seq"], h["step"], h["event_type"]) for h in one["history"]] == [
        (1, "opened", "test.account_opened"), (2, "audited", "test.deposit_audited")]
    assert client.get(f"/api/sagas/sagatest.audits/{uuid.uuid4()}", headers=bearer(token)).status_code == 404


def test_the_api_lists_recurring_jobs_and_pauses_and_resumes_them(app, runtime, token) -> None:
    runtime.recurring = [EVERY_SECOND]
    ensure_scheduled(runtime.engine, [EVERY_SECOND])
    client = app.test_client()
    (job,) = client.get("/api/recurring", headers=bearer(token)).get_json()["items"]
    assert job["name"] == "test.every_second" and job["schedule"] == "every 0:00:01" and job["next_run_at"]
    paused = client.post("/api/recurring/test.every_second/pause", headers=bearer(token))
    assert paused.status_code == 200 and paused.get_json()["paused"] is True
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'") == 0
    resumed = client.post("/api/recurring/test.every_second/resume", headers=bearer(token)).get_json()
    assert resumed["paused"] is False
    assert scalar(runtime, "SELECT count(*) FROM ozzy_scheduled WHERE status = 'scheduled'") == 1
    assert client.post("/api/recurring/nope/pause", headers=bearer(token)).status_code == 404


def test_the_back_office_shows_sagas_and_recurring_jobs(clean_db, runtime, logged_in) -> None:
    _, accounts = _run_audits(clean_db, 1)
    ensure_scheduled(runtime.engine, [EVERY_SECOND])
    client = logged_in
    sagas = client.get("/admin/sagas/?flt0_status_equals=running").get_data(as_text=True)
    assert str(accounts[0]) in sagas
    import html
    import re

    link = re.search(r'href="(/admin/sagas/details/\?[^"]+)"', sagas)
    assert link, sagas[-2000:]
    details = client.get(html.unescape(link.group(1)))
    assert details.status_code == 200 and "audited" in details.get_data(as_text=True)
    jobs = client.get("/admin/recurring/").get_data(as_text=True)
    assert "test.every_second" in jobs
    response = client.post("/admin/recurring/action/", data={
        "action": "pause", "rowid": ["test.every_second"], "csrf_token": csrf_token(client, "/admin/recurring/")})
    assert response.status_code == 302
    assert scalar(runtime, "SELECT paused FROM ozzy_recurring") is True
