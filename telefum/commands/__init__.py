"""One module per ``telefum`` subcommand: each has ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code)."""
