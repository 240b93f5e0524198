"""``ozzy dev`` as a newcomer runs it: embedded servers, the whole stack, `.ozzy/env` for the other
commands, a drained process that does not stop the rest, reload on code change, ``--reset``, and
Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.procs import ROOT
from tests.e2e.test_loans_http import call
from tests.integration.helpers import wait_until
from tests.servers import free_port


def start_dev(root: Path, port: int, marker: str, *options: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("OZZY_")}
    env.update(OZZY_DEV_TEST_MARKER=marker, PYTHONPATH=str(ROOT))
    with open(root / "dev.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "dev", "--port", str(port), "--root", str(root), *options],
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


def test_ozzy_dev_runs_everything_reloads_survives_a_drain_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
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
        # (the banner comes once web listens, not before)
        log = wait_until(lambda: _log_with(root, f"Open {base}/"), timeout=10)
        assert log.index("web listening on") < log.index(f"Open {base}/")
        # (the check for leftovers below sees every part of the stack while it runs)
        parts = wait_until(lambda: whole_stack(marker, root), timeout=30)
        # When an application is submitted
        status, body = call("POST", f"{base}/loan-applications",
                            {"applicant_name": "Newcomer", "email": "new@example.com", "amount": 700})
        assert status == 201
        # Then the worker handles its event through the relay (the whole flow: tests/e2e/test_loans_http.py)
        view = wait_until(lambda: _scored(base, body["id"]), timeout=60)
        # And an `ozzy` command run in the project, with no server URL set, uses dev's servers (.ozzy/env)
        made = subprocess.run([sys.executable, "-m", "shared.cli", "tokens", "create", "admin", "--name", "e2e"],
                              cwd=root, env=_env_without_servers(), capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().rsplit(": ", 1)[1]
        # When an operator drains and stops the worker (it exits 0), web and relay keep running
        worker_node = wait_until(lambda: _node(base, token, "worker"), timeout=30)
        assert _api(base, token, "POST", f"/api/nodes/{worker_node}/stop")[0] == 202
        wait_until(lambda: _log_with(root, "worker stopped by itself (exit 0: drained or stopped by an operator);"
                                           " web and relay keep running"), timeout=60)
        assert running_parts(marker, root)["worker"] == 0
        assert all(running_parts(marker, root)[p] for p in ("web", "relay", "postgres", "redis"))
        assert _healthy(base) and proc.poll() is None
        # When a Python file of the project changes, web, relay and worker start again
        web_pid = _pid_of(marker, root, "ozzy web")
        (root / "handlers.py").write_text("# changed\n")
        wait_until(lambda: _log_with(root, "changed: handlers.py"), timeout=30)
        wait_until(lambda: running_parts(marker, root)["worker"] == 1 and _healthy(base), timeout=90, interval=0.3)
        assert _pid_of(marker, root, "ozzy web") != web_pid
        # Then Ctrl-C stops every process and both servers
        codes = [stop_with_ctrl_c(proc, marker, root)]
        # And the data survives a restart
        proc = start_dev(root, port, marker)
        wait_until(lambda: _healthy(base), timeout=120, interval=0.5)
        assert call("GET", f"{base}/loan-applications/{body['id']}")[1]["credit_score"] == view["credit_score"]
        codes.append(stop_with_ctrl_c(proc, marker, root))
        # And --reset starts from empty data, and says so
        proc = start_dev(root, port, marker, "--reset")
        wait_until(lambda: _healthy(base), timeout=120, interval=0.5)
        assert "--reset: deleted the development data" in (root / "dev.log").read_text()
        assert call("GET", f"{base}/loan-applications/{body['id']}")[0] == 404
        codes.append(stop_with_ctrl_c(proc, marker, root))
    finally:
        kill_everything(proc, marker, root)
    print(f"processes of the dev run: {parts}")
    # And the dev command exits 0 on Ctrl-C, every time, as relay, worker and web do
    assert codes == [0, 0, 0], f"ozzy dev exited {codes} on Ctrl-C:\n{(root / 'dev.log').read_text()[-5000:]}"


def _log_with(root: Path, text: str) -> str | None:
    log = (root / "dev.log").read_text()
    return log if text in log else None


def _env_without_servers() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("OZZY_")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _api(base: str, token: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, b"" if method == "POST" else None, method=method,
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _node(base: str, token: str, kind: str) -> str | None:
    """The id of the live node of this kind (GET /api/nodes)."""
    status, body = _api(base, token, "GET", "/api/nodes")
    assert status == 200, body
    live = [n["id"] for n in body["items"] if n["kind"] == kind and not n["stopped"]]
    return live[0] if len(live) == 1 else None


def _pid_of(marker: str, root: Path, needle: str) -> int:
    pids = [int(line.split(":", 1)[0]) for line in leftovers(marker, root) if needle in line]
    assert len(pids) == 1, pids
    return pids[0]


def _healthy(base: str) -> bool:
    try:
        return call("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False


def _scored(base: str, application_id: str) -> dict | None:
    view = call("GET", f"{base}/loan-applications/{application_id}")[1]
    return view if view["credit_score"] is not None else None


def test_ozzy_dev_on_a_busy_port_says_so_in_one_line_before_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "shared.cli", "dev", "--port", str(port), "--root", str(tmp_path)],
                              env=_env_without_servers(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    said = f"ozzy dev: port {port} is in use; stop the other server or pass --port"
    assert done.stderr.strip().splitlines() == [said]
    assert not (tmp_path / ".ozzy" / "pg").exists()
