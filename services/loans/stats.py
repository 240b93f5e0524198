"""``loans.stats``: loan applications per UTC day and outcome, a projection of the event log.

Behind ``GET /loan-stats``. The relays keep it live; ``ozzy projections rebuild loans.stats``
rebuilds it from the whole log, and the numbers come out the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, timezone
from typing import Any

from sqlalchemy import Connection, text

from shared.projections import Applied, Projection
from services.loans.model import LoanApplicationSubmitted, LoanApproved, LoanRejected, OfferAccepted, OfferExpired

#: The counters, in the order the API shows them, by the event type that counts in each.
KINDS = {
    LoanApplicationSubmitted.event_type: "submitted",
    LoanApproved.event_type: "approved",
    LoanRejected.event_type: "rejected",
    OfferAccepted.event_type: "accepted",
    OfferExpired.event_type: "expired",
}
COLUMNS = tuple(KINDS.values())

_BUMP = text(
    f"""
    INSERT INTO loan_stats_days (day, {", ".join(COLUMNS)})
    VALUES (:day, {", ".join(f":{c}" for c in COLUMNS)})
    ON CONFLICT (day) DO UPDATE SET {", ".join(f"{c} = loan_stats_days.{c} + EXCLUDED.{c}" for c in COLUMNS)}
    """
)


class LoanStats(Projection, name="loans.stats", tables=("loan_stats_days",)):
    """Counts per UTC day of the event's time: one upsert per day touched by a batch."""

    event_types = (LoanApplicationSubmitted, LoanApproved, LoanRejected, OfferAccepted, OfferExpired)

    def apply(self, batch: Sequence[Applied]) -> None:
        counts: Counter[tuple[date, str]] = Counter(
            (item.occurred_at.astimezone(timezone.utc).date(), KINDS[item.type]) for item in batch
        )
        days = sorted({day for day, _ in counts})
        batch[0].conn.execute(_BUMP, [{"day": day, **{c: counts[day, c] for c in COLUMNS}} for day in days])


def loan_stats(conn: Connection) -> dict[str, Any]:
    """The projection as ``GET /loan-stats`` returns it: ``{"days": {"YYYY-MM-DD": {...}}}``."""
    rows = conn.execute(text(f"SELECT day, {', '.join(COLUMNS)} FROM loan_stats_days ORDER BY day")).all()
    return {"days": {row.day.isoformat(): {c: getattr(row, c) for c in COLUMNS} for row in rows}}
