"""The README's tutorial ("Your first handler, from an empty folder") as data for the tests that
run it: its blocks in order, each a file to write (a Python block whose first line is ``# path``)
or shell commands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your first handler, from an empty folder"


@dataclass(frozen=True)
class Block:
    kind: str  # "file" or "sh"
    text: str
    path: str | None = None


def section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else None]


def blocks() -> list[Block]:
    found = []
    for lang, body in re.findall(r"```(python|sh)\n(.*?)```", section(), flags=re.S):
        if lang == "python":
            first, _, rest = body.partition("\n")
            assert first.startswith("# "), f"a tutorial file block starts with '# path': {first!r}"
            found.append(Block("file", rest, first[2:].strip()))
        else:
            found.append(Block("sh", body))
    return found


def files() -> dict[str, str]:
    return {b.path: b.text for b in blocks() if b.kind == "file" and b.path}


def write_files(root: Path, only: tuple[str, ...] | None = None) -> None:
    for path, text in files().items():
        if only is None or path in only:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
