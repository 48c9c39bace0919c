"""``python -m points_cli``: the same as the ``points`` command."""

from points_cli.main import main

main()
