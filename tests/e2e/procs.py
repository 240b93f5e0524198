"""Start real ``ozzy`` processes as a user would, with their output kept for failure reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.config import Config

ROOT = Path(__file__).resolve().parents[2]
OZZY = [sys.executable, "-m", "shared.cli"]


def process_env(settings: Config, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OZZY_")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        OZZY_REDIS_NAMESPACE=settings.redis_namespace,
        OZZY_HANDLER_MODULES='["tests.handlers"]',
        OZZY_MIGRATION_PACKAGES="[]",
        OZZY_LOG_LEVEL="INFO",
        SECRET_KEY=settings.secret_key or "test-secret-key-not-for-production",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class OzzyProcess:
    """One ``ozzy <command>`` child process whose combined output goes to a temporary file."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.log = tempfile.NamedTemporaryFile(prefix=f"ozzy-{args[0]}-", suffix=".log", delete=False)
        try:
            self.proc = subprocess.Popen(
                OZZY + args, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            # The child writes through its own copy of the descriptor; ours would only leak (a
            # ResourceWarning in whichever later test the garbage collector runs in). The path stays.
            self.log.close()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL and -9 if it would not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def ozzy_processes(env: dict[str, str], *commands: list[str]) -> Iterator[list[OzzyProcess]]:
    procs = [OzzyProcess(cmd, env) for cmd in commands]
    try:
        yield procs
    except BaseException:
        for p in procs:
            sys.stderr.write(f"\n----- ozzy {' '.join(p.args)} -----\n{p.output()[-6000:]}\n")
        raise
    finally:
        for p in procs:
            p.terminate()
            Path(p.log.name).unlink(missing_ok=True)
