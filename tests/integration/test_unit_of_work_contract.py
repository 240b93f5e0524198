"""The unit-of-work contract (tests/contract/unit_of_work.py), on PostgreSQL."""

from __future__ import annotations

import pytest

from tests.contract.unit_of_work import *  # noqa: F403  (the contract's tests run here)
from tests.integration.helpers import make_runtime


@pytest.fixture
def new_uow(clean_db):  # type: ignore[no-untyped-def]
    runtime = make_runtime(clean_db, handlers=[])
    yield runtime.unit_of_work
    runtime.close()
