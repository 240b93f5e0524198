"""Scheduled events in /api and the back office: listed with due time and state, cancellable
while they wait, a conflict once they fired."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from shared.delivery import timers
from tests.domain import AccountOpened
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
from tests.integration.helpers import scalar


def _schedule(runtime, *offsets: float, key: str | None = None) -> list[uuid.UUID]:
    now = datetime.now(timezone.utc)
    with runtime.unit_of_work() as uow:
        ids = [uow.schedule(AccountOpened(account_id=uuid.uuid4(), owner="x"), at=now + timedelta(seconds=s), key=key)
               for s in offsets]
        uow.commit()
    return ids


def test_the_api_lists_waiting_events_earliest_first_with_pages(app, runtime, token) -> None:
    late, early, fired = _schedule(runtime, 3600, 600, -1)
    assert timers.fire_due(runtime.engine) == 1
    client = app.test_client()
    page = client.get("/api/scheduled?limit=1", headers=bearer(token)).get_json()
    assert [i["event_id"] for i in page["items"]] == [str(early)] and page["items"][0]["status"] == "scheduled"
    rest = client.get(f"/api/scheduled?limit=1&cursor={page['next_cursor']}", headers=bearer(token)).get_json()
    assert [i["event_id"] for i in rest["items"]] == [str(late)] and rest["next_cursor"] is None
    done = client.get("/api/scheduled?status=fired", headers=bearer(token)).get_json()
    assert [i["event_id"] for i in done["items"]] == [str(fired)] and done["items"][0]["fired_at"]
    one = client.get(f"/api/scheduled/{late}", headers=bearer(token)).get_json()
    assert one["type"] == "test.account_opened" and one["payload"]["owner"] == "x"
    assert client.get("/api/scheduled?status=nope", headers=bearer(token)).status_code == 400


def test_cancel_through_the_api_then_a_conflict_and_an_unknown_id(app, runtime, token) -> None:
    waiting, fired = _schedule(runtime, 3600, -1)
    timers.fire_due(runtime.engine)
    client = app.test_client()
    response = client.post(f"/api/scheduled/{waiting}/cancel", headers=bearer(token))
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    assert client.post(f"/api/scheduled/{waiting}/cancel", headers=bearer(token)).status_code == 409
    conflict = client.post(f"/api/scheduled/{fired}/cancel", headers=bearer(token))
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "conflict"
    assert client.post(f"/api/scheduled/{uuid.uuid4()}/cancel", headers=bearer(token)).status_code == 404
    assert timers.fire_due(runtime.engine) == 0  # the cancelled one never fires
    assert scalar(runtime, "SELECT count(*) FROM ozzy_outbox WHERE event_type <> 'ozzy.audit'") == 1


def test_the_back_office_lists_and_cancels_the_selected_events(runtime, logged_in) -> None:
    keep, drop = _schedule(runtime, 3600, 7200)
    client = logged_in
    page = client.get("/admin/scheduled/")
    assert page.status_code == 200 and "test.account_opened" in page.get_data(as_text=True)
    row_id = scalar(runtime, "SELECT id FROM ozzy_scheduled WHERE event_id = :id", id=drop)
    response = client.post("/admin/scheduled/action/", data={
        "action": "cancel", "rowid": [str(row_id)], "csrf_token": csrf_token(client, "/admin/scheduled/")})
    assert response.status_code == 302
    assert scalar(runtime, "SELECT status FROM ozzy_scheduled WHERE event_id = :id", id=drop) == "cancelled"
    assert scalar(runtime, "SELECT status FROM ozzy_scheduled WHERE event_id = :id", id=keep) == "scheduled"
