"""``ozzy dev`` as a newcomer runs it: embedded servers, the whole stack, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.e2e.procs import ROOT
from tests.e2e.test_loans_http import call
from tests.integration.helpers import wait_until
from tests.servers import free_port


def start_dev(root: Path, port: int, marker: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("OZZY_")}
    env.update(OZZY_DEV_TEST_MARKER=marker, PYTHONPATH=str(ROOT))
    with open(root / "dev.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "dev", "--port", str(port), "--root", str(root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def leftovers(marker: str, root: Path) -> list[str]:
    """Command lines of live processes started by the dev run (by environment marker or data path)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if status != "Z" and (marker.encode() in environ or str(root) in cmdline) and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def stop_dev(proc: subprocess.Popen[bytes], root: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError((root / "dev.log").read_text()[-5000:]) from None


def test_ozzy_dev_runs_everything_with_embedded_servers_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    shutil.copy(ROOT / "Procfile", root / "Procfile")
    marker = uuid.uuid4().hex
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_dev(root, port, marker)
    try:
        # Given the whole stack started by one command, with no DATABASE_URL or REDIS_URL
        wait_until(lambda: _healthy(base), timeout=120, interval=0.5)
        assert f"Open {base}/" in (root / "dev.log").read_text()
        # When an application is submitted
        status, body = call("POST", f"{base}/loan-applications",
                            {"applicant_name": "Newcomer", "email": "new@example.com", "amount": 700})
        assert status == 201
        view = wait_until(lambda: _final(base, body["id"]), timeout=60)
        assert len(view["notifications"]) == 1
    finally:
        stop_dev(proc, root)
    # Then Ctrl-C stopped every process and both servers
    assert proc.returncode is not None
    wait_until(lambda: not leftovers(marker, root), timeout=20)
    # And the data survives a restart
    proc = start_dev(root, port, marker)
    try:
        wait_until(lambda: _healthy(base), timeout=120, interval=0.5)
        assert call("GET", f"{base}/loan-applications/{body['id']}")[1]["status"] == view["status"]
    finally:
        stop_dev(proc, root)
    wait_until(lambda: not leftovers(marker, root), timeout=20)


def _healthy(base: str) -> bool:
    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False


def _final(base: str, application_id: str) -> dict | None:
    view = call("GET", f"{base}/loan-applications/{application_id}")[1]
    return view if view["status"] in ("approved", "rejected") and view["notifications"] else None
