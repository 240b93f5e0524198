"""The ``ozzy`` command line (each command is the composition root of its process) and ``ozzy dev``."""

from shared.cli.commands import main

__all__ = ["main"]
