"""``python -m streamsched.cli``: the same as the ``streamsched`` command."""

from streamsched.cli import main

main()
