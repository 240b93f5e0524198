"""`ozzy web` as started in production refuses a body over the limit before reading it, and sends the
security headers (#15). One real process; the rest of #15 is tested in-process."""

from __future__ import annotations

import socket
import time
import urllib.request

from tests.e2e.procs import ozzy_processes, process_env
from tests.integration.helpers import wait_until
from tests.servers import free_port


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_ozzy_web_answers_413_before_reading_a_huge_body(clean_db) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ozzy_processes(process_env(clean_db), ["web", "--host", "127.0.0.1", "--port", str(port), "--threads", "2"]):
        wait_until(lambda: _up(base), timeout=60, interval=0.2)
        # When a client announces 1 GiB and sends only the headers
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /loan-applications HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1073741824\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        # Then waitress answers 413 at once, without waiting for the body the client never sends
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert time.monotonic() - started < 5
        # And a normal response carries the security headers, HSTS included outside dev mode
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            headers = response.headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Strict-Transport-Security"]
