"""The README tutorial, executed: from an empty folder to a handled event seen in the back office.

Every shell block runs as the README shows it, in order, in one empty temporary folder (with the
exports of the blocks before it, as in the reader's terminal), and every file block is written
where its first line says. The only changes: `ozzy dev` runs in the background (a terminal of its
own) with PORT set to a free port, and the curl's `localhost:8000` names that port."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from tests.e2e.test_dev_command import kill_everything, stop_with_ctrl_c
from tests.integration.helpers import wait_until
from tests.readme_tutorial import blocks
from tests.servers import free_port

BIN = Path(sys.executable).parent


def test_the_readme_tutorial_from_an_empty_folder_to_a_handled_event(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    port = free_port()
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "PYTHONPATH", "SECRET_KEY", "PORT") and not k.startswith("OZZY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OZZY_TUTORIAL_MARKER=marker)
    exports: list[str] = []
    dev: subprocess.Popen[bytes] | None = None
    order_id = None
    steps = blocks()
    assert [b.kind for b in steps].count("sh") >= 5 and any(b.text.strip() == "ozzy dev" for b in steps)
    try:
        for block in steps:
            if block.kind == "file":
                assert block.path is not None
                (project / block.path).parent.mkdir(parents=True, exist_ok=True)
                (project / block.path).write_text(block.text)
                continue
            if block.text.strip() == "ozzy dev":
                dev = _start_dev(project, env, exports, port)
                wait_until(lambda: "Open http://" in _log(project), timeout=120, interval=0.5)
                continue
            script = block.text.replace("localhost:8000", f"localhost:{port}")
            done = subprocess.run(["bash", "-ec", "\n".join([*exports, script])], cwd=project, env=env,
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"{block.text}\n{done.stdout}\n{done.stderr}\n{_log(project)[-3000:]}"
            exports += [line for line in block.text.splitlines() if line.startswith("export ")]
            if "ozzy db revision" in block.text:
                assert "op.create_table('orders'" in (project / "shop" / "migrations" / "0001_orders.py").read_text()
                # ozzy dev applies it and restarts: the next command needs web up on the new schema
                wait_until(lambda: _restarted(project), timeout=120, interval=0.5)
            if "curl" in block.text and "/orders" in block.text:
                order_id = json.loads(done.stdout)["id"]
        assert dev is not None and order_id is not None
        # Then the worker handled the event (ozzy dev's log shows its line)
        wait_until(lambda: "shop.send_confirmation handled shop.order_placed" in _log(project), timeout=60)
        # And the back office shows the event and its delivery, done
        user, password = (project / ".ozzy" / "dev-admin.txt").read_text().split()
        events, details = _back_office(f"http://127.0.0.1:{port}", user, password)
        assert "shop.order_placed" in events
        (tmp_path / "details.html").write_text(details)
        deliveries = details[details.find('id="event-deliveries"'):]
        assert "shop.send_confirmation" in deliveries and re.search(r">\s*done\s*<", deliveries), deliveries[:1500]
        assert order_id in details  # the payload names the order
        # And Ctrl-C stops it all with exit 0
        assert stop_with_ctrl_c(dev, marker, project) == 0
    finally:
        if dev is not None:
            kill_everything(dev, marker, project)
    print(f"tutorial log tail:\n{_log(project)[-1500:]}")


def _start_dev(project: Path, env: dict[str, str], exports: list[str], port: int) -> subprocess.Popen[bytes]:
    with open(project / "dev.log", "ab") as log:
        return subprocess.Popen(["bash", "-ec", "\n".join([*exports, f"export PORT={port}", "exec ozzy dev"])],
                                cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _log(project: Path) -> str:
    path = project / "dev.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _restarted(project: Path) -> bool:
    """Web listens again after the last restart that the new migration caused."""
    log = _log(project)
    last = log.rfind("changed: ")
    return last != -1 and "shop/migrations" in log[last:].splitlines()[0] and "web listening on" in log[last:]


def _back_office(base: str, user: str, password: str) -> tuple[str, str]:
    """Log in as a person would; the event log page, and the details page of the order's event."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{base}/admin/login", timeout=20).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    assert token, form[:500]
    body = urllib.parse.urlencode({"csrf_token": token.group(1), "username": user, "password": password}).encode()
    opener.open(f"{base}/admin/login", body, timeout=20).read()
    events = opener.open(f"{base}/admin/events/", timeout=20).read().decode()
    row = next((r for r in events.split("<tr") if "shop.order_placed" in r and "/admin/events/details/" in r), "")
    link = re.search(r'href="(/admin/events/details/\?id=\d+[^"]*)"', row)
    assert link, events[-2000:]
    details = opener.open(base + link.group(1).replace("&amp;", "&"), timeout=20).read().decode()
    return events, details


def test_the_tutorial_shows_every_step_it_promises() -> None:
    kinds = [(b.kind, b.path or b.text) for b in blocks()]
    files = [path for kind, path in kinds if kind == "file"]
    assert files == ["shop/orders.py", "tests/test_orders.py", "shop/app.py"]
    commands = " ".join(text for kind, text in kinds if kind == "sh")
    for step in ("export OZZY_MIGRATION_PACKAGES", "python -m pytest", "ozzy dev", "ozzy db revision -m", "curl"):
        assert step in commands
    assert shutil.which("curl"), "the tutorial's step 7 needs curl"
