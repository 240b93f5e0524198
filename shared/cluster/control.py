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

from shared.cluster import values
from shared.cluster.listeners import ListenerSpec, listener
from shared.cluster.nodes import Node
from shared.model.events import Event
from shared.model.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

Command = Literal["pause_handler", "resume_handler", "pause_relay", "resume_relay", "drain_stop"]
PAUSED_HANDLERS = "ozzy.paused_handlers"
RELAY_PAUSED = "ozzy.relay_paused"
#: Event types a paused relay still dispatches, so the command that resumes it can reach it.
CONTROL_PLANE = ("ozzy.control_command", "ozzy.setting_changed", "ozzy.flag_changed", "ozzy.listener_command")


class ControlCommand(Event, name="ozzy.control_command", version=1):
    command: Command
    #: A handler name for handler commands, a node id for drain_stop, none for the relay.
    target: str | None = None


def issue(uow: UnitOfWork, command: Command, target: str | None, actor: str | None) -> None:
    """Record the command (and the pause state it implies) in the caller's unit of work."""
    if command in ("pause_handler", "resume_handler"):
        setting = values.define_setting(uow, PAUSED_HANDLERS, "json", [], "handlers paused by operators", actor)
        paused = set(setting.value or [])
        paused = paused | {target} if command == "pause_handler" else paused - {target}
        values.change_setting(uow, PAUSED_HANDLERS, sorted(paused), actor)
    elif command in ("pause_relay", "resume_relay"):
        values.define_setting(uow, RELAY_PAUSED, "boolean", False, "relays paused by operators", actor)
        values.change_setting(uow, RELAY_PAUSED, command == "pause_relay", actor)
    uow.publish(ControlCommand(command=command, target=target))


class Controls:
    """What this process does when a command targets it; built by its composition root."""

    def __init__(
        self,
        node: Node,
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
        if action is None:
            return
        if command.command.endswith("_handler"):
            action(command.target)
        else:
            action()

    def listener(self) -> ListenerSpec:
        """The cluster-wide listener that applies commands to this process."""
        return listener(self.apply, ControlCommand, name="ozzy.control", start="now")

    def acknowledged(self) -> list[dict[str, Any]]:
        """This process's recent acknowledged commands, for its node-registry row."""
        return list(self.acks)


def stop_this_process() -> None:
    """Drain and stop: the same path as SIGTERM (finish the batch or the messages in flight)."""
    os.kill(os.getpid(), signal.SIGTERM)
