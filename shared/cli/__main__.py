"""``python -m shared.cli``: the ``ozzy`` command line."""

from shared.cli.commands import main

main()
