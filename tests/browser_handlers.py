"""A handler for the browser test: it fails permanently until the ``browser.gate_open`` flag is on,
so retrying its dead letter succeeds only after an operator flips the flag in the back office."""

from __future__ import annotations

from shared import PermanentError, UnitOfWork, flags, handles
from tests.domain import AccountOpened, SideEffect


@handles(AccountOpened, name="browser.gated", max_retries=0)
def gated(event: AccountOpened, uow: UnitOfWork) -> None:
    if not flags.is_enabled("browser.gate_open"):
        raise PermanentError("the gate is closed: turn on the browser.gate_open flag")
    uow.add(SideEffect(handler="gated", event_key=str(event.account_id), account_id=event.account_id))
