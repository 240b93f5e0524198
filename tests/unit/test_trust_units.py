"""Pieces of #15 that need no server: redirects, ids, log lines, CSV cells, roles, the audit type."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.ops.accounts import ROLES, role_allows, weaker_role
from shared.web.http import csv_safe, log_safe, parse_id


def test_every_process_knows_the_audit_event_so_relays_send_it_rather_than_park_it() -> None:
    # A fresh interpreter that imports only the composition root, as `ozzy relay` does
    code = ("import shared.runtime.root; from shared.model.events import registered_event_types;"
            " print('ozzy.audit' in registered_event_types())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_roles_include_the_weaker_ones() -> None:
    assert ROLES == ("viewer", "operator", "admin")
    assert role_allows("admin", "operator") and role_allows("operator", "viewer") and role_allows("viewer", "viewer")
    assert not role_allows("viewer", "operator") and not role_allows("operator", "admin")
    assert not role_allows(None, "viewer") and not role_allows("root", "viewer")
    assert weaker_role("admin", "viewer") == "viewer" and weaker_role("operator", "admin") == "operator"


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("42", 42), ("9223372036854775807", 2**63 - 1),
                                               ("9223372036854775808", None), ("²", None), ("١٢", None), ("", None),
                                               ("+1", None), ("1_000", None), ("9" * 5000, None), (None, None)])
def test_parse_id(raw, expected) -> None:
    assert parse_id(raw) == expected


def test_log_safe_and_csv_safe() -> None:
    assert log_safe("GET /a\nforged\r\x1b[2J\u2028\\") == "GET /a\\nforged\\r\\x1b[2J\\u2028\\\\"
    assert [csv_safe(v) for v in ("=1+1", "+1", "-1", "@x", "\tx", "ok", 5)] == ["'=1+1", "'+1", "'-1", "'@x", "'\tx", "ok", 5]


@pytest.mark.parametrize("target", ["/%09/evil.example", "/\t/evil.example", "//evil", "/\\evil", "https://e.x",
                                    "javascript:x", "", None, "evil", "/\n/evil", "/ok\x7f"])
def test_next_refuses_anything_but_a_local_path(target) -> None:
    from admin.auth import _safe_next

    assert _safe_next(target) == "/admin/"


def test_next_keeps_local_paths() -> None:
    from admin.auth import _safe_next

    assert _safe_next("/admin/events/?page=2") == "/admin/events/?page=2"
