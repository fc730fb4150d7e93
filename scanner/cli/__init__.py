"""The `fleetscan` command: the one place that prints and picks exit codes.

Each command lives in its own module with a `register(subparsers)` and its `run` functions;
shared exit codes, consoles and report publishing are in `common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from scanner import __version__
from scanner.cli import evaluate, gate, history, merge, page, probe, rulecmds, sinkcmds, sweep
from scanner.cli.common import EXIT_BAD_INPUT, UsageError, stderr
from scanner.inputs import InputError
from scanner.interrupt import Interrupted, sigterm_raises
from scanner.output import STDOUT, OutputError, is_stdout

# In the order `fleetscan --help` lists them.
COMMANDS = (sweep, evaluate, gate, merge, page, history, sinkcmds, rulecmds, probe)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fleetscan",
        description="Find KVM hosts that will hang their guests under AMD 5-level paging.",
    )
    top.add_argument("--version", action="version", version=f"fleetscan {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    _describe(commands)
    return top


def _describe(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`fleetscan COMMAND --help` opens with what the command is for (its one-line help)."""
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    for name, command in subparsers.choices.items():
        if command.description is None and helps.get(name):
            text = str(helps[name])
            command.description = text[0].upper() + text[1:] + "."
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if is_stdout(getattr(args, "output", None)):
        args.output = STDOUT  # /dev/stdout is `-`: the report, not also the --format rendering
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with sigterm_raises():
            return run(args)
    except (UsageError, InputError, OutputError) as exc:
        stderr().print(f"fleetscan: {exc}", markup=False)
        return EXIT_BAD_INPUT
    except Interrupted as exc:
        stderr().print("fleetscan: interrupted")
        return exc.exit_code
    except KeyboardInterrupt:
        stderr().print("fleetscan: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
