"""The projections the relays of this application keep live (collected like the handlers here)."""

from __future__ import annotations

from services.loans.stats import LoanStats

__all__ = ["LoanStats"]
