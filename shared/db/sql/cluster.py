"""The cluster: listeners' reads of the log by dispatch position, their checkpoints, the node registry."""

from __future__ import annotations

from sqlalchemy import text

#: Cluster listeners read the log by dispatch position, never by id (rows commit out of id order;
#: positions are given under :data:`DISPATCH_LOCK` at commit, so none appears behind a reader).
FETCH_DISPATCHED = text(
    """
    SELECT id, event_id, event_type, event_version, aggregate_type, aggregate_id, payload, metadata,
           occurred_at, dispatch_seq
      FROM ozzy_outbox
     WHERE dispatch_seq > :after AND event_type = ANY(CAST(:types AS text[]))
     ORDER BY dispatch_seq
     LIMIT :limit
    """
)
END_OF_LOG = text("SELECT coalesce(max(dispatch_seq), 0) FROM ozzy_outbox WHERE dispatch_seq IS NOT NULL")
LOAD_CHECKPOINTS = text("SELECT name, position FROM ozzy_checkpoints WHERE name = ANY(CAST(:names AS text[]))")
SAVE_CHECKPOINT = text(
    """
    INSERT INTO ozzy_checkpoints (name, position, updated_at) VALUES (:name, :position, now())
    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
    """
)

#: Insert or refresh a node's row: a process that started while the database was down registers
#: at its first successful heartbeat.
UPSERT_NODE = text(
    """
    INSERT INTO ozzy_nodes (id, kind, host, pid, version, started_at, heartbeat_at, info)
    VALUES (:id, :kind, :host, :pid, :version, :started_at, now(), CAST(:info AS jsonb))
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), info = EXCLUDED.info
    """
)
NODE_STOPPED = text("UPDATE ozzy_nodes SET stopped_at = now() WHERE id = :id")
