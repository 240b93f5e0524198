"""The supervisor of ``ozzy dev``: runs the Procfile's processes, interleaves their output, and
reacts to their exits, to code changes and to Ctrl-C.

- A process that stops by itself with exit code 0 (an operator drained it) leaves the others
  running, and the supervisor says so in one line.
- A process that fails at start stops them all (``ozzy dev`` exits with its code); one that fails
  after a code change waits for the next change.
- A code change (``watchfiles``, debounced) stops every process, runs ``before_restart`` (new
  migrations) and starts them again.
- Ctrl-C or SIGTERM stops every process: SIGTERM, then SIGKILL after a generous grace period or at
  a second Ctrl-C.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: What ``ozzy dev`` runs when the project has no Procfile.
DEFAULT_PROCFILE = "web: ozzy web\nrelay: ozzy relay\nworker: ozzy worker\n"
#: How long a process may take to stop (finish its in-flight work) before it is killed.
GRACE_SECONDS = 30.0


def procfile_processes(root: Path) -> list[tuple[str, str]]:
    """(name, command) of each process of the project's Procfile (web, relay, worker if none)."""
    from honcho.environ import parse_procfile

    path = root / "Procfile"
    procfile = parse_procfile(path.read_text() if path.exists() else DEFAULT_PROCFILE)
    return [(name, cmd) for name, cmd in procfile.processes.items()]


@dataclass
class Child:
    """One process of the Procfile, as the supervisor runs it."""

    name: str
    command: str
    proc: subprocess.Popen[bytes] | None = None
    #: Set when the supervisor itself stops the process (reload, Ctrl-C): its exit is expected.
    stopping: bool = False
    #: Started again after a code change: a failure then waits for the next change.
    reloaded: bool = False
    returncode: int | None = None


@dataclass
class Supervisor:
    """Runs the processes, interleaves their output, and reacts to exits, code changes and signals.

    Every event reaches the main thread through one queue: ``("exit", child, proc)`` from the
    thread reading a process's output, ``("change", paths)`` from the file watcher. A signal only
    counts in :attr:`signalled`, which the main loop reads (a signal handler must not take locks);
    a second one while the processes stop kills them at once."""

    root: Path
    env: dict[str, str]
    children: list[Child]
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    grace: float = GRACE_SECONDS
    before_restart: Callable[[], bool] = lambda: True
    events: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)
    signalled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, name: str, line: str) -> None:
        width = max(len(c.name) for c in self.children)
        with self._lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{width}} | {line}\n")
            self.out.flush()

    def start(self, child: Child) -> None:
        child.stopping, child.returncode = False, None
        proc = subprocess.Popen(
            # exec: the process replaces the shell, so it gets the stop signal itself
            ["/bin/sh", "-c", f"exec {child.command}"], cwd=self.root, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches ozzy dev only; it stops them in order
        )
        child.proc = proc
        threading.Thread(target=self._pump, args=(child, proc), daemon=True, name=f"dev-{child.name}").start()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(child.name, raw.decode(errors="replace").rstrip("\n"))
        proc.stdout.close()
        proc.wait()
        self.events.put(("exit", child, proc))

    def running(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None and c.proc.poll() is None]

    def stop_all(self) -> list[Child]:
        """SIGTERM every running process, wait for them (a second Ctrl-C, or the grace period,
        kills what is left), record their exit codes and return them."""
        live = self.running()
        for child in live:
            child.stopping = True
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        first_signal = self.signalled
        while any(c.proc is not None and c.proc.poll() is None for c in live):
            if time.monotonic() > deadline or self.signalled != first_signal:
                for child in live:
                    if child.proc is not None and child.proc.poll() is None:
                        self.say("dev", f"{child.name} did not stop in time; killing it")
                        _signal_group(child, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
        for child in live:
            assert child.proc is not None
            child.proc.wait()
            child.returncode = child.proc.returncode
        return live

    def loop(self) -> int:
        """Until Ctrl-C/SIGTERM or a start-up failure; the exit code of ``ozzy dev``."""
        for child in self.children:
            self.start(child)
        while True:
            if self.signalled:
                # 0 when what ran stopped cleanly (an earlier failure after a reload was reported
                # then); a process still starting when asked to stop dies of the SIGTERM it was sent
                failed = [c.returncode for c in self.stop_all() if c.returncode not in (0, -signal.SIGTERM)]
                return _shell_code(failed[0]) if failed else 0
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event[0] == "change":
                self._reload(event[1])
                continue
            _, child, proc = event
            if proc is not child.proc or child.stopping:
                continue  # an exit the supervisor caused, or of an earlier incarnation
            child.returncode = proc.returncode
            others = _still_running([c.name for c in self.running()])
            if proc.returncode == 0:
                self.say("dev", f"{child.name} stopped by itself (exit 0: drained or stopped by an operator);"
                                f" {others}")
            elif child.reloaded:
                self.say("dev", f"{child.name} exited with code {proc.returncode}; {others};"
                                " it starts again when a file changes")
            else:
                self.say("dev", f"{child.name} exited with code {proc.returncode}; stopping the others")
                self.stop_all()
                return _shell_code(proc.returncode)

    def _reload(self, paths: list[str]) -> None:
        shown = ", ".join(os.path.relpath(p, self.root) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        self.say("dev", f"changed: {shown}; restarting {', '.join(c.name for c in self.children)}")
        self.stop_all()
        if self.signalled or not self.before_restart():
            return
        for child in self.children:
            child.reloaded = True
            self.start(child)


def _still_running(names: list[str]) -> str:
    """``web and relay keep running`` (what the developer still has)."""
    if not names:
        return "no other process runs (Ctrl-C to quit, or save a file to restart them)"
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} {'keeps' if len(names) == 1 else 'keep'} running"


def _shell_code(returncode: int | None) -> int:
    """A process's exit code as a shell shows it (128 + N for a death by signal N)."""
    if returncode is None:
        return 0
    return returncode if returncode >= 0 else 128 - returncode


def _signal_group(child: Child, signum: int) -> None:
    if child.proc is None:
        return
    try:
        os.killpg(child.proc.pid, signum)
    except ProcessLookupError:
        pass


def watch_changes(root: Path, events: queue.Queue[tuple[Any, ...]], stop: threading.Event) -> None:
    """Put ``("change", paths)`` on ``events`` for each debounced batch of changed Python files
    under ``root`` (not in .ozzy, virtual environments, caches)."""
    import watchfiles

    python_files = watchfiles.PythonFilter(ignore_paths=[str((root / ".ozzy").resolve())])
    for changes in watchfiles.watch(root, watch_filter=python_files, stop_event=stop, raise_interrupt=False,
                                    debounce=800, yield_on_timeout=False):
        events.put(("change", sorted({path for _, path in changes})))


def announce_when_listening(host: str, port: int, banner: list[str], supervisor: Supervisor,
                            stop: threading.Event) -> None:
    """Print the banner once, when web accepts connections (not before: it may yet fail)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    while not stop.wait(0.1):
        try:
            with socket.create_connection((target, port), timeout=1):
                for line in banner:
                    supervisor.say("dev", line)
                return
        except OSError:
            continue
