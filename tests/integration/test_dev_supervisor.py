"""``ozzy dev``'s supervisor with small shell processes (no servers): a process that stops by
itself with 0 (a drain) leaves the others running; one that fails at start stops them all; a
signal stops everything, killing what outlives the grace period."""

from __future__ import annotations

import io
import signal
import threading
import time
from pathlib import Path

from shared.cli.supervisor import Child, Supervisor
from tests.integration.helpers import wait_until

#: A process that stops cleanly on SIGTERM, as web, relay and worker do.
SLEEPER = """sh -c 'trap "exit 0" TERM; sleep 60 & wait'"""


def supervise(tmp_path: Path, commands: dict[str, str], grace: float = 10.0) -> tuple[Supervisor, io.StringIO]:
    out = io.StringIO()
    children = [Child(name, command) for name, command in commands.items()]
    return Supervisor(tmp_path, {"PATH": "/usr/bin:/bin"}, children, out=out, grace=grace), out


def run_in_thread(supervisor: Supervisor) -> list[int]:
    result: list[int] = []
    threading.Thread(target=lambda: result.append(supervisor.loop()), daemon=True).start()
    return result


def test_a_process_that_exits_0_by_itself_leaves_the_others_running_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    supervisor, out = supervise(tmp_path, {"web": SLEEPER, "worker": "sh -c 'echo draining; sleep 0.3; exit 0'"})
    result = run_in_thread(supervisor)
    wait_until(lambda: "worker stopped by itself" in out.getvalue(), timeout=60)
    time.sleep(0.5)
    assert [c.name for c in supervisor.running()] == ["web"] and not result
    lines = out.getvalue().splitlines()
    assert any(line.endswith("worker | draining") for line in lines)
    assert [line for line in lines if "dev    |" in line] == [
        next(line for line in lines if "worker stopped by itself" in line)]
    assert "web keeps running" in out.getvalue()
    supervisor.signalled = 1
    assert wait_until(lambda: result, timeout=60) == [0]
    assert supervisor.running() == []


def test_a_process_that_fails_at_start_stops_the_others_with_its_exit_code(tmp_path: Path) -> None:
    supervisor, out = supervise(tmp_path, {"web": SLEEPER, "relay": "sh -c 'echo port in use >&2; exit 3'"})
    started = time.monotonic()
    assert supervisor.loop() == 3
    assert time.monotonic() - started < 30
    assert "relay exited with code 3; stopping the others" in out.getvalue()
    assert supervisor.running() == []


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    supervisor, out = supervise(tmp_path, {"web": SLEEPER, "stubborn": "sh -c 'trap \"\" TERM; echo ready; sleep 60'"},
                                grace=1.0)
    result = run_in_thread(supervisor)
    wait_until(lambda: "stubborn | ready" in out.getvalue(), timeout=60)
    supervisor.signalled = 1
    assert wait_until(lambda: result, timeout=60) == [128 + signal.SIGKILL]
    assert "stubborn did not stop in time; killing it" in out.getvalue()
    assert supervisor.running() == []


def test_a_code_change_restarts_every_process(tmp_path: Path) -> None:
    web = """sh -c 'echo started; trap "exit 0" TERM; sleep 60 & wait'"""
    supervisor, out = supervise(tmp_path, {"web": web, "relay": SLEEPER})
    result = run_in_thread(supervisor)
    wait_until(lambda: len(supervisor.running()) == 2, timeout=60)
    before = {c.name: c.proc.pid for c in supervisor.children if c.proc}
    supervisor.events.put(("change", [str(tmp_path / "app" / "handlers.py")]))
    try:
        wait_until(lambda: out.getvalue().count("web   | started") == 2 and len(supervisor.running()) == 2, timeout=60)
    except AssertionError:
        raise AssertionError(out.getvalue()) from None
    assert "changed: app/handlers.py; restarting web, relay" in out.getvalue()
    assert all(c.proc and c.proc.pid != before[c.name] for c in supervisor.children)
    # a failure after a reload waits for the next change instead of stopping everything
    supervisor.children[1].command = "sh -c 'exit 1'"
    supervisor.events.put(("change", [str(tmp_path / "x.py")]))
    wait_until(lambda: "relay exited with code 1; web keeps running" in out.getvalue(), timeout=60)
    assert not result and [c.name for c in supervisor.running()] == ["web"]
    supervisor.signalled = 1
    assert wait_until(lambda: result, timeout=60) == [0]


def test_a_process_still_starting_when_ctrl_c_comes_counts_as_stopped(tmp_path: Path) -> None:
    # (a process that has not yet installed its signal handlers dies of the SIGTERM it is sent)
    supervisor, out = supervise(tmp_path, {"web": SLEEPER, "relay": "sleep 60"})
    result = run_in_thread(supervisor)
    wait_until(lambda: len(supervisor.running()) == 2, timeout=60)
    supervisor.signalled = 1
    assert wait_until(lambda: result, timeout=60) == [0]


def test_a_second_ctrl_c_kills_what_is_still_stopping(tmp_path: Path) -> None:
    supervisor, out = supervise(tmp_path, {"stubborn": "sh -c 'trap \"\" TERM; echo ready; sleep 60'"}, grace=120.0)
    result = run_in_thread(supervisor)
    wait_until(lambda: "stubborn | ready" in out.getvalue(), timeout=60)
    supervisor.signalled = 1
    time.sleep(0.5)
    assert not result and supervisor.running()
    started = time.monotonic()
    supervisor.signalled = 2
    assert wait_until(lambda: result, timeout=60) == [128 + signal.SIGKILL]
    assert time.monotonic() - started < 30
