"""The README tutorial's model and its test (step 3) run as written, with no server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.readme_tutorial import files, write_files

# The project folder first on the path, as `python -m pytest` run there puts it.
RUN_TEST = ("import runpy, sys; sys.path.insert(0, '.')\n"
            "runpy.run_path('tests/test_orders.py')['test_a_placed_order_is_confirmed_once']()\n")


def test_the_tutorial_test_passes_with_the_in_memory_store(tmp_path: Path) -> None:
    assert {"shop/orders.py", "tests/test_orders.py"} <= set(files())
    # Given the tutorial's files (in a fresh interpreter: they declare a table and an event type,
    # which must not leak into this process's registries)
    write_files(tmp_path, only=("shop/orders.py", "tests/test_orders.py"))
    (tmp_path / "shop" / "__init__.py").write_text("")
    program = RUN_TEST + "print('passed')"
    # When its test runs, Then its assertions hold
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["passed"]

