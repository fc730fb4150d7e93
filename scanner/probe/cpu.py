"""CPU identity and address widths from /proc/cpuinfo and lscpu."""

import json
import os
import re
import subprocess
from typing import Any, Dict, List, Optional

from . import items
from .items import Item, Root

_ADDRESS_SIZES = re.compile(r"(\d+)\s*bits physical,\s*(\d+)\s*bits virtual")
_CPUINFO_INTS = {"cpu family": "cpu_family", "model": "model", "stepping": "stepping"}
_CPUINFO_TEXT = {"vendor_id": "vendor_id", "model name": "model_name"}
LSCPU_CAPTURES = ("/sos_commands/processor/lscpu", "/sos_commands/processor/lscpu_-J")


def _to_int(text: str) -> Optional[int]:
    text = text.strip()
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        return int(text, 16) if text.lower().startswith("0x") else None
    except ValueError:
        return None


def parse_address_sizes(text: str) -> Optional[Dict[str, int]]:
    match = _ADDRESS_SIZES.search(text)
    if not match:
        return None
    return {
        "physical_address_bits": int(match.group(1)),
        "virtual_address_bits": int(match.group(2)),
    }


def parse_cpuinfo(text: str) -> Dict[str, Any]:
    """The first processor's identity, flags and address sizes, plus the processor count.

    A file that does not end in a newline was cut short: its last line is dropped, so a
    half-written flags line can't hide `la57`.
    """
    lines = text.split("\n")
    truncated = not text.endswith("\n")
    if truncated:
        lines = lines[:-1]
    value: Dict[str, Any] = {"processors": 0}
    for line in lines:
        key, sep, raw = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        raw = raw.strip()
        if key == "processor":
            value["processors"] += 1
            continue
        if value["processors"] > 1:
            continue
        if key in _CPUINFO_TEXT:
            value.setdefault(_CPUINFO_TEXT[key], raw)
        elif key in _CPUINFO_INTS:
            number = _to_int(raw)
            if number is not None:
                value.setdefault(_CPUINFO_INTS[key], number)
        elif key == "flags":
            value.setdefault("flags", raw.split())
        elif key == "address sizes":
            sizes = parse_address_sizes(raw)
            if sizes:
                for name, bits in sizes.items():
                    value.setdefault(name, bits)
    if truncated:
        value["truncated"] = True
    return value


def read_cpuinfo(root: Root) -> Item:
    source = "/proc/cpuinfo"
    text, failure = items.read_text_item(root, source)
    if failure:
        return failure
    assert text is not None
    value = parse_cpuinfo(text)
    if "vendor_id" not in value and "flags" not in value:
        return items.failed(
            source, items.UNPARSABLE, "%s: unparsable (no vendor_id or flags line)" % source
        )
    return items.ok(source, value)


def _lscpu_fields(entries: List[Any], out: Dict[str, str]) -> None:
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        field = str(entry.get("field", "")).strip().rstrip(":")
        data = entry.get("data")
        if field and isinstance(data, str):
            out.setdefault(field, data)
        children = entry.get("children")
        if isinstance(children, list):
            _lscpu_fields(children, out)


def parse_lscpu_json(text: str) -> Dict[str, str]:
    document = json.loads(text)
    out: Dict[str, str] = {}
    _lscpu_fields(document.get("lscpu", []) if isinstance(document, dict) else [], out)
    return out


def parse_lscpu_text(text: str) -> Dict[str, str]:
    """`Key: value` lines; values wrapped onto indented lines (as terminals do) are rejoined."""
    out: Dict[str, str] = {}
    last_key = None
    value_column = 0
    for line in text.splitlines():
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9 ()/_.-]*):(\s*)(.*)$", line)
        if match and not (last_key and line[:value_column].strip() == "" and value_column):
            last_key = match.group(2).strip()
            value_column = len(line) - len(match.group(4))
            out.setdefault(last_key, match.group(4).rstrip())
            continue
        if last_key and value_column and line[:value_column].strip() == "" and line.strip():
            out[last_key] = out[last_key] + line[value_column:].rstrip()
        else:
            last_key = None
    return out


def summarize_lscpu(fields: Dict[str, str]) -> Dict[str, Any]:
    value: Dict[str, Any] = {}
    if "Architecture" in fields:
        value["architecture"] = fields["Architecture"].strip()
    if "Vendor ID" in fields:
        value["vendor_id"] = fields["Vendor ID"].strip()
    if "Model name" in fields:
        value["model_name"] = fields["Model name"].strip()
    for key, name in (("CPU family", "cpu_family"), ("Model", "model"), ("Stepping", "stepping")):
        number = _to_int(fields.get(key, ""))
        if number is not None:
            value[name] = number
    if "Address sizes" in fields:
        sizes = parse_address_sizes(fields["Address sizes"])
        if sizes:
            value.update(sizes)
    if "Flags" in fields:
        value["flags"] = fields["Flags"].split()
    return value


def read_lscpu(root: Root) -> Item:
    if root.live:
        command = "lscpu -J"
        try:
            env = dict(os.environ, LC_ALL="C")
            proc = subprocess.Popen(
                ["lscpu", "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return items.failed(command, items.ERROR, "lscpu -J: timed out after 10 s")
        except EnvironmentError as exc:
            return items.from_os_error("lscpu", exc)
        if proc.returncode != 0:
            reason = err.decode("utf-8", "replace").strip().splitlines()
            return items.failed(
                command,
                items.ERROR,
                "lscpu -J: exit %d%s" % (proc.returncode, (": " + reason[0]) if reason else ""),
            )
        try:
            fields = parse_lscpu_json(out.decode("utf-8", "replace"))
        except ValueError as exc:
            return items.failed(command, items.UNPARSABLE, "lscpu -J: not JSON (%s)" % exc)
        return items.ok(command, summarize_lscpu(fields))
    capture, text, failure = items.first_capture(root, LSCPU_CAPTURES, "lscpu")
    if failure is not None:
        return failure
    assert capture is not None and text is not None
    if text.lstrip().startswith("{"):
        try:
            fields = parse_lscpu_json(text)
        except ValueError as exc:
            return items.failed(capture, items.UNPARSABLE, "%s: not JSON (%s)" % (capture, exc))
    else:
        fields = parse_lscpu_text(text)
    summary = summarize_lscpu(fields)
    if not summary:
        return items.failed(capture, items.UNPARSABLE, "%s: no lscpu fields" % capture)
    return items.ok(capture, summary)


def read_machine(root: Root) -> Item:
    """The machine architecture: uname on the live host; trees rely on lscpu/cpuinfo."""
    if not root.live:
        return items.failed("uname -m", items.NOT_APPLICABLE, "uname -m: not a live host")
    return items.ok("uname -m", os.uname()[4])
