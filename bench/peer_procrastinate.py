"""procrastinate, as a user would set it up: a PostgreSQL job queue whose job is deferred in the
writer's own transaction, and one task doing the handler's work.

``python -m procrastinate --app=bench.peer_procrastinate.app worker -c 8`` (started by
``bench/peers.py``). Settings: ``OZZY_PEER_PROCRASTINATE_CONNINFO`` (libpq) and
``OZZY_PEER_DATABASE_URL``; both name the peers' own database, which holds procrastinate's schema.
"""

from __future__ import annotations

import os

import procrastinate

from bench.peer_tasks import record_effect

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["OZZY_PEER_PROCRASTINATE_CONNINFO"]))


@app.task(name="bench.peer_record", retry=3)
def peer_record(item_id: str, seq: int) -> None:
    record_effect(item_id, seq)
