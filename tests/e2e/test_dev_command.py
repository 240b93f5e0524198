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
            start_new_session=True,  # its own process group, as a terminal's foreground job has
        )


def leftovers(marker: str, root: Path) -> list[str]:
    """Command lines of live processes started by the dev run: by the environment marker, or by the
    data path in their command line or working folder. (Servers that rename their process, as Redis
    and PostgreSQL do, overwrite the memory /proc shows as their environment and command line;
    Redis runs in its data folder and PostgreSQL's processes in theirs.)"""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        ours = marker.encode() in environ or str(root) in cmdline or cwd.startswith(str(root))
        if status != "Z" and ours and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def ctrl_c(proc: subprocess.Popen[bytes], root: Path) -> int:
    """Press Ctrl-C: SIGINT to the foreground process group (the dev command and whatever shares
    its group), then wait for the dev command; its exit code. Fails if it does not exit in a minute."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ozzy dev did not stop on Ctrl-C:\n{(root / 'dev.log').read_text()[-5000:]}") from None


def kill_everything(proc: subprocess.Popen[bytes], marker: str, root: Path) -> None:
    """After a failure, leave nothing running: the dev command's group, then every process it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    for line in leftovers(marker, root):
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def running_parts(marker: str, root: Path) -> dict[str, int]:
    """How many live processes of each part of the stack the dev run has started."""
    found = leftovers(marker, root)
    parts = {"postgres": "postgres", "redis": "redis-server", "web": "ozzy web", "relay": "ozzy relay",
             "worker": "ozzy worker"}
    return {part: sum(needle in line for line in found) for part, needle in parts.items()}


def whole_stack(marker: str, root: Path) -> dict[str, int] | None:
    """The live processes of each part of the stack, once every part has at least one."""
    parts = running_parts(marker, root)
    return parts if all(parts.values()) else None


def stop_with_ctrl_c(proc: subprocess.Popen[bytes], marker: str, root: Path) -> int:
    """Ctrl-C; then every process the run started must be gone (the README: Ctrl-C stops every
    process and both servers). Returns the dev command's exit code."""
    code = ctrl_c(proc, root)
    wait_until(lambda: not leftovers(marker, root), timeout=20)
    return code


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
        # (the check for leftovers below sees every part of the stack while it runs)
        parts = wait_until(lambda: whole_stack(marker, root), timeout=30)
        # When an application is submitted
        status, body = call("POST", f"{base}/loan-applications",
                            {"applicant_name": "Newcomer", "email": "new@example.com", "amount": 700})
        assert status == 201
        view = wait_until(lambda: _final(base, body["id"]), timeout=60)
        assert len(view["notifications"]) == 1
        # Then Ctrl-C stops every process and both servers
        codes = [stop_with_ctrl_c(proc, marker, root)]
        # And the data survives a restart
        proc = start_dev(root, port, marker)
        wait_until(lambda: _healthy(base), timeout=120, interval=0.5)
        assert call("GET", f"{base}/loan-applications/{body['id']}")[1]["status"] == view["status"]
        codes.append(stop_with_ctrl_c(proc, marker, root))
    finally:
        kill_everything(proc, marker, root)
    print(f"processes of the dev run: {parts}")
    # And the dev command exits 0 on Ctrl-C, both times, as relay, worker and web do
    assert codes == [0, 0], f"ozzy dev exited {codes} on Ctrl-C:\n{(root / 'dev.log').read_text()[-5000:]}"


def _healthy(base: str) -> bool:
    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False


def _final(base: str, application_id: str) -> dict | None:
    view = call("GET", f"{base}/loan-applications/{application_id}")[1]
    return view if view["status"] in ("approved", "rejected") and view["notifications"] else None
