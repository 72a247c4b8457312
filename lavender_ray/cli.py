"""The `lavender` command line. Each subcommand lives in `lavender_ray.commands.<name>` and
exposes `HELP`, `add_arguments(parser)` and `run(args) -> int`; modules load lazily so
`lavender --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

import yaml

from lavender_ray.config import ConfigError, LavenderConfig, config_from, load_config
from lavender_ray.storage import read_text

DEFAULT_PRESET = "demo"

# subcommand -> module under lavender_ray.commands (one line per command)
COMMANDS: dict[str, str] = {
    "config": "config",
    "demo": "demo",
    "plan": "plan",
    "train": "train",
    "extract": "extract",
    "show-targets": "show_targets",
    "data": "data",
    "tune": "tune",
    "evaluate": "evaluate",
    "export": "export",
}


def resumable_config(
    args: argparse.Namespace, saved_config: Callable[[LavenderConfig], str]
) -> LavenderConfig:
    """The config of a command that resumes (`train`, `tune`): `--preset` (default demo) and
    `--set`; with `--resume` and no `--preset`, the saved config of what is resumed (at
    `saved_config(cfg)`, for the run the `--set` values name) with the `--set` values on top,
    so `--resume --set train.run_name=NAME` is enough."""
    named = load_config(args.preset or DEFAULT_PRESET, args.overrides)
    if args.preset is not None or not args.resume:
        return named
    text = read_text(saved_config(named))
    if text is None:
        return named  # nothing to resume: the command says so, naming the folder
    return config_from(yaml.safe_load(text) or {}, args.overrides)


# what train, extract and tune check before Ray starts (pipeline.preflight, check_run, the plan)
PREFLIGHT_HELP = ("Before Ray starts, one line and exit code 2 for: the config, every input path "
                  "and model folder, and the first rows of each source (one whose rows are all "
                  "rejected would add nothing)")


def add_config_arguments(
    parser: argparse.ArgumentParser, default_preset: str | None = "demo", default_help: str = ""
) -> None:
    """`--preset NAME|PATH` and repeatable `--set key=value`, the same for every subcommand.
    `default_preset=None`: the command chooses (`default_help` says what)."""
    parser.add_argument(
        "--preset",
        default=default_preset,
        help="shipped preset name or path to a YAML file "
        f"(default: {default_help or default_preset})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value by dotted key, e.g. --set train.max_steps=3 (repeatable)",
    )


VERBOSE_HELP = (
    "show Ray's, Ray Data's, DeepSpeed's and the Ray workers' own output on the console, as "
    "they print it (default: only in the log file under {logs}, named at the end; the console "
    "keeps the progress, warnings that need you and the summary, and a failure is one line "
    "naming the log that holds its traceback)"
)


def add_verbose_argument(parser: argparse.ArgumentParser, logs: str) -> None:
    """`--verbose` after the subcommand (`lavender --verbose CMD` works for every command);
    `logs` names the folder the command's log file goes to."""
    # SUPPRESS: absent here, the global flag's value stays
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP.format(logs=logs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavender",
        description="Lavender diffusion instruction tuning on Ray: SD cross-attention targets, "
        "VLM attention alignment, Ray Data + Ray Train + DeepSpeed.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help=VERBOSE_HELP.format(logs="the folder the command writes"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"lavender_ray.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _interrupted=getattr(module, "INTERRUPTED", ""))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A bad config, path or argument (`ConfigError`) is one message and
    exit code 2; Ctrl-C is one line and 130, saying how the work goes on where there is a way
    (the exception's own text, e.g. `train.launch.TrainingInterrupted`, else the command
    module's `INTERRUPTED`). Any other error of a command with a quiet console (its traceback
    in the log file) is one line naming it and the log, exit code 1; with `--verbose`, or
    before the console starts, Python's traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as err:
        print(f"lavender {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        how = str(err) or args._interrupted
        print(f"\nlavender {args.command}: interrupted (Ctrl-C){'; ' + how if how else ''}",
              file=sys.stderr)
        return 130
    except Exception as err:
        log = getattr(err, "log_path", None)  # set by a quiet `Console`, which logged it
        if log is None:
            raise
        from lavender_ray.console import failure_line

        notes = "".join(f"\n  {note}" for note in getattr(err, "__notes__", []))
        print(f"lavender {args.command}: failed: {failure_line(err)}\n  the whole traceback is "
              f"in {log} (--verbose prints it here){notes}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
