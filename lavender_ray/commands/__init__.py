"""One module per `lavender` subcommand: `HELP`, `add_arguments(parser)`, `run(args) -> int`.

Each `run` imports the library code it needs when the command runs, not at the top: building
the parser imports every command module, and Ray, torch and transformers take seconds to
import, so `lavender --help` stays fast.
"""
