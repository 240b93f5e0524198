"""Control commands: an operator pauses or resumes a handler or the relay, or asks a node to drain
and stop. A command is a domain event delivered to every process by the cluster listeners; the
processes it targets act on it and acknowledge it in their node-registry row.

Pauses are also state (runtime settings ``ozzy.paused_handlers`` and ``ozzy.relay_paused``), so a
process that starts later honours them. A paused handler's messages wait in Redis; a paused relay
leaves events in the outbox. Nothing is lost either way.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

from shared import dynamic
from shared.cluster import on_every_node
from shared.events import Event
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)

Command = Literal["pause_handler", "resume_handler", "pause_relay", "resume_relay", "drain_stop"]
PAUSED_HANDLERS = "ozzy.paused_handlers"
RELAY_PAUSED = "ozzy.relay_paused"


class ControlCommand(Event, name="ozzy.control_command", version=1):
    command: Command
    #: A handler name for handler commands, a node id for drain_stop, none for the relay.
    target: str | None = None


def issue(uow: UnitOfWork, command: Command, target: str | None, actor: str | None) -> None:
    """Record the command (and the pause state it implies) in the caller's unit of work."""
    if command in ("pause_handler", "resume_handler"):
        setting = dynamic.define_setting(uow, PAUSED_HANDLERS, "json", [], "handlers paused by operators", actor)
        paused = set(setting.value or [])
        paused = paused | {target} if command == "pause_handler" else paused - {target}
        dynamic.change_setting(uow, PAUSED_HANDLERS, sorted(paused), actor)
    elif command in ("pause_relay", "resume_relay"):
        dynamic.define_setting(uow, RELAY_PAUSED, "boolean", False, "relays paused by operators", actor)
        dynamic.change_setting(uow, RELAY_PAUSED, command == "pause_relay", actor)
    uow.publish(ControlCommand(command=command, target=target))


class Controls:
    """What this process does when a command targets it; installed by its composition root."""

    def __init__(
        self,
        node: Any,
        *,
        handlers: Callable[[], set[str]] = set,
        pause_handler: Callable[[str], None] | None = None,
        resume_handler: Callable[[str], None] | None = None,
        pause_relay: Callable[[], None] | None = None,
        resume_relay: Callable[[], None] | None = None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self._handlers = handlers
        self._by_command: dict[str, Callable[..., None] | None] = {
            "pause_handler": pause_handler,
            "resume_handler": resume_handler,
            "pause_relay": pause_relay,
            "resume_relay": resume_relay,
            "drain_stop": stop or stop_this_process,
        }
        self.acks: list[dict[str, Any]] = []

    def targets_me(self, command: ControlCommand) -> bool:
        if self._by_command.get(command.command) is None:
            return False
        if command.command == "drain_stop":
            return command.target == str(self.node.id)
        if command.command.endswith("_handler"):
            return command.target in self._handlers()
        return True

    def apply(self, command: ControlCommand) -> None:
        if not self.targets_me(command):
            return
        log.warning("control command %s %s", command.command, command.target or "")
        self.acks = [*self.acks, {"command": command.command, "target": command.target, "at": time.time()}][-20:]
        self.node.heartbeat()  # the acknowledgement, before acting (drain_stop ends the process)
        action = self._by_command[command.command]
        assert action is not None
        action(command.target) if command.command.endswith("_handler") else action()


def stop_this_process() -> None:
    """Drain and stop: the same path as SIGTERM (finish the batch or the messages in flight)."""
    os.kill(os.getpid(), signal.SIGTERM)


_controls: Controls | None = None


def install(controls: Controls) -> None:
    global _controls
    _controls = controls


def acknowledged() -> list[dict[str, Any]]:
    """This process's recent acknowledged commands, for its node-registry row."""
    return list(_controls.acks) if _controls is not None else []


@on_every_node(ControlCommand, name="ozzy.control", start="now")
def _on_command(command: ControlCommand) -> None:
    if _controls is not None:
        _controls.apply(command)
