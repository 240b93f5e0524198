"""The README's code runs: the tutorial's event, aggregate and handler with a unit of work, end to end
(the whole tutorial, as commands: tests/e2e/test_tutorial.py)."""

from __future__ import annotations

import re
import sys
from decimal import Decimal
import types
from pathlib import Path

import pytest

from shared.delivery.relay import Relay
from tests.integration.helpers import running_worker, scalar, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_tutorial_model_saves_an_order_and_its_handler_confirms_it_once(clean_db, monkeypatch) -> None:
    from tests.readme_tutorial import files

    # Given the tutorial's shop/orders.py, loaded as a module
    module = types.ModuleType("readme_example")
    sys.modules["readme_example"] = module
    exec(compile(files()["shop/orders.py"], "README.md", "exec"), module.__dict__)
    try:
        order_table = module.Order.__table__
        # and a process configured from the environment, as the README says
        monkeypatch.setenv("DATABASE_URL", clean_db.database_url)
        monkeypatch.setenv("REDIS_URL", clean_db.redis_url)
        monkeypatch.setenv("OZZY_REDIS_NAMESPACE", clean_db.redis_namespace)
        monkeypatch.setenv("OZZY_HANDLER_MODULES", '["readme_example"]')
        from shared import bootstrap

        runtime = bootstrap()
        order_table.create(runtime.engine, checkfirst=True)
        # When an order is placed as shop/app.py's route places it
        route = files()["shop/app.py"]
        assert "order = Order.place(body[\"customer\"], Decimal(body[\"total\"]))" in route
        with runtime.unit_of_work() as uow:
            order = module.Order.place("ada", Decimal("12.50"))
            uow.add(order)
            uow.commit()
        # Then the order and its event were saved together, and the handler ran once
        assert scalar(runtime, "SELECT count(*) FROM orders") == 1
        assert scalar(runtime, "SELECT event_type FROM ozzy_outbox") == "shop.order_placed"
        assert "shop.send_confirmation" in runtime.handlers
        relay = Relay(runtime)
        with running_worker(runtime):
            relay.drain()
            wait_until(lambda: scalar(runtime, "SELECT status FROM ozzy_deliveries") == "done")
        assert scalar(runtime, "SELECT confirmed FROM orders") is True
        order_table.drop(runtime.engine)
        runtime.close()
    finally:
        sys.modules.pop("readme_example", None)


def test_the_readme_names_the_test_command_that_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test" in README.read_text()
    assert re.search(r"^exec \./scripts/test\b", ci, flags=re.M)


def _variables() -> list[str]:
    from shared.config import Config

    special = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL", "secret_key": "SECRET_KEY"}
    return [special.get(name, f"OZZY_{name.upper()}") for name in Config.model_fields]


@pytest.mark.parametrize("variable", _variables())
def test_the_configuration_table_documents_every_setting(variable: str) -> None:
    assert f"`{variable}`" in README.read_text()
