"""The README's "Test your handlers" example runs as written, with no server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: the example declares a table and an event type, which must not leak
# into this process's registries (the integration tests load the same README definitions).
PROGRAM = """
import re, sys, types
blocks = re.findall(r"```python\\n(.*?)```", open("README.md").read(), flags=re.S)
definitions = next(b for b in blocks if "class Order(Aggregate)" in b)
kit = next(b for b in blocks if "InMemoryStore()" in b)
module = sys.modules["readme_example"] = types.ModuleType("readme_example")
exec(compile(definitions, "README.md", "exec"), module.__dict__)
exec(compile(kit, "README.md", "exec"), module.__dict__)   # its asserts are the test
store = module.store
print(len(store.log), len(store.done))
"""


def test_the_readme_test_kit_example_runs_without_servers() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert any("InMemoryStore()" in b for b in blocks)
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]  # one event logged, one (event, handler) pair done
