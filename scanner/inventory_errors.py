"""Ansible's own complaint about an inventory it could not parse, from the right plugin.

`ansible-inventory` tries every enabled inventory plugin and prints each one's failure. For a
YAML file with a syntax error the last one is the INI plugin's ("Invalid host pattern 'all:'"),
which says nothing useful: the plugin that speaks for a file is the one Ansible picks by its
name (auto and yaml for .yml/.yaml/.json, toml for .toml, ini otherwise; a file without a
suffix is YAML when its first line is a mapping key such as `all:`), and its message is
reported with the file, line and column Ansible gives. Where Ansible's yaml plugin gives no
position (a .json file), the position comes from parsing the file with PyYAML, as Ansible does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# ansible-core 2.19+: "[WARNING]: Failed to parse inventory with 'yaml' plugin: MESSAGE" then,
# a few lines on, "Origin: FILE:LINE:COLUMN" (or a description of the plugin and source).
_NEW = re.compile(
    r"^\[WARNING\]: Failed to parse inventory with '(?P<plugin>\w+)' plugin: (?P<msg>.*)$"
)
_ORIGIN = re.compile(r"^Origin: (?P<origin>.*)$")
# Older ansible-core: "[WARNING]:  * Failed to parse FILE with yaml plugin: MESSAGE".
_OLD = re.compile(r"\* Failed to parse (?P<source>.+?) with (?P<plugin>\w+) plugin: (?P<msg>.*)$")
_LOCATED = re.compile(r":\d+:\d+$")
_POSITION = re.compile(r"line (?P<line>\d+), column (?P<column>\d+)")

# Which plugins speak for a file, by its name, in Ansible's order of preference.
_BY_SUFFIX = {
    ".yml": ("auto", "yaml"),
    ".yaml": ("auto", "yaml"),
    ".json": ("yaml",),
    ".toml": ("toml",),
}
_DEFAULT = ("ini", "script", "host_list")
# A file without a suffix is tried by the yaml plugin too; its first line says which it is.
_YAML_KEY = re.compile(r"^(---|[\w.-]+:)\s*(#.*)?$")


@dataclass(frozen=True)
class Failure:
    plugin: str
    message: str
    origin: str | None


def failures(text: str) -> list[Failure]:
    """Every plugin failure in ansible-inventory's output, in order."""
    found: list[Failure] = []
    pending: tuple[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        new = _NEW.match(line)
        if new:
            if pending:
                found.append(Failure(pending[0], pending[1], None))
            pending = (new["plugin"], new["msg"].strip())
            continue
        origin = _ORIGIN.match(line)
        if origin and pending:
            found.append(Failure(pending[0], pending[1], origin["origin"].strip()))
            pending = None
            continue
        old = _OLD.search(line)
        if old:
            found.append(Failure(old["plugin"], old["msg"].strip(), old["source"]))
    if pending:
        found.append(Failure(pending[0], pending[1], None))
    return found


def _yaml_position(path: Path) -> str | None:
    try:
        yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f"{mark.line + 1}:{mark.column + 1}"
    except (OSError, yaml.YAMLError):
        return None
    return None


def _speakers(source: Path) -> tuple[str, ...]:
    """The plugins that speak for `source`, by its name and, without a suffix, its first line."""
    suffix = source.suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if not suffix:
        try:
            with source.open(encoding="utf-8", errors="replace") as handle:
                for raw in handle:
                    line = raw.strip()
                    if line and not line.startswith(("#", ";")):
                        return ("yaml", *_DEFAULT) if _YAML_KEY.match(line) else _DEFAULT
        except OSError:
            pass
    return _DEFAULT


def explain(text: str, source: Path, shown: str) -> str | None:
    """One line for the user: `FILE[:LINE:COLUMN]: Ansible's message`, FILE as given (`shown`).

    None when the output holds no plugin failure (the caller falls back to Ansible's error).
    """
    found = failures(text)
    if not found:
        return None
    order = _speakers(source)
    ranked = sorted(
        found,
        key=lambda f: (
            order.index(f.plugin) if f.plugin in order else len(order),
            not (f.origin and _LOCATED.search(f.origin)),
        ),
    )
    best = ranked[0]
    message = best.message.removeprefix("Failed to parse inventory: ")
    where = shown
    located_by_ansible = _LOCATED.search(best.origin) if best.origin else None
    if located_by_ansible is not None:
        where += located_by_ansible.group(0)
    elif (position := _POSITION.search(best.message)) is not None:
        where += f":{position['line']}:{position['column']}"
    elif best.plugin in ("yaml", "auto") and (located := _yaml_position(source)):
        where += f":{located}"
    return f"{where}: {message}"
