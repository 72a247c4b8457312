"""One module per `lavender` subcommand: `HELP`, `add_arguments(parser)`, `run(args) -> int`."""
