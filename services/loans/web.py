"""HTTP API of the loan example: a thin layer over the use cases."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

from shared.web.http import BadRequest, json_body, unit_of_work
from services.loans import use_cases
from services.loans.model import OfferNotAcceptable
from services.loans.stats import loan_stats

bp = Blueprint("loans", __name__)

#: Larger amounts are refused as absurd rather than rejected by the credit rules.
MAX_AMOUNT = Decimal("1000000")


class SubmitApplication(BaseModel):
    model_config = ConfigDict(extra="forbid")

    applicant_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    email: EmailStr
    amount: Annotated[Decimal, Field(gt=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)]

    @field_validator("applicant_name", mode="before")
    @classmethod
    def _name_is_text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_is_a_number(cls, value: object) -> object:
        # JSON numbers only: "100" (a string) or true (a bool) are type errors, not amounts.
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise ValueError("must be a number")
        return value


@bp.post("/loan-applications")
def submit():  # type: ignore[no-untyped-def]
    command = json_body(SubmitApplication)
    with unit_of_work() as uow:
        application_id = use_cases.submit_application(uow, command.applicant_name, command.email, command.amount)
    return jsonify({"id": str(application_id), "status": "submitted"}), 201


@bp.post("/loan-applications/<application_id>/accept")
def accept(application_id: str):  # type: ignore[no-untyped-def]
    """The applicant takes the offer: 200 while it is open, 409 in any other state, 404 if unknown."""
    key = _application_id(application_id)
    try:
        with unit_of_work() as uow:
            use_cases.accept_offer(uow, key)
    except use_cases.UnknownApplication:
        raise BadRequest("no such loan application", status=404, code="not_found") from None
    except OfferNotAcceptable as exc:
        raise BadRequest(f"the offer cannot be accepted: {exc}", status=409, code="conflict") from None
    return jsonify({"id": str(key), "status": "accepted"})


def _application_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest("no such loan application", status=404, code="not_found") from None


@bp.get("/loan-applications/<application_id>")
def show(application_id: str):  # type: ignore[no-untyped-def]
    key = _application_id(application_id)
    with unit_of_work() as uow:
        view = use_cases.application_view(uow, key)
    if view is None:
        raise BadRequest("no such loan application", status=404, code="not_found")
    return jsonify(view)


@bp.get("/loan-stats")
def stats():  # type: ignore[no-untyped-def]
    """Applications per UTC day and outcome, from the ``loans.stats`` projection."""
    with current_app.extensions["ozzy"].engine.connect() as conn:
        return jsonify(loan_stats(conn))
