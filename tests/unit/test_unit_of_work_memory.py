"""The unit-of-work contract (tests/contract/unit_of_work.py), on the in-memory adapter."""

from __future__ import annotations

import pytest

from shared.testing import InMemoryStore
from tests.contract.unit_of_work import *  # noqa: F403  (the contract's tests run here)


@pytest.fixture
def new_uow():  # type: ignore[no-untyped-def]
    return InMemoryStore().unit_of_work
