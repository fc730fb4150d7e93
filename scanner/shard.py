"""Stable splits of an inventory by host name: `--shard I/N` and `--workers`.

A host's shard is sha256(name) mod N: the same on every control node, Python and run (Python's
own hash() is salted per process), independent of inventory order, and a host never moves
between shards while N stays the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A --shard value that is not I/N with 1 <= I <= N."""


def parse(spec: str) -> tuple[int, int]:
    """`I/N` (1-based) as (I, N); ShardError names what is wrong."""
    found = _SPEC.match(spec)
    if not found:
        raise ShardError(f"--shard {spec!r}: give I/N, e.g. 2/8 for the second of eight shards")
    index, count = int(found.group(1)), int(found.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ShardError(f"--shard {spec!r}: I must be between 1 and N, N at least 1")
    return index, count


def shard_of(host: str, count: int) -> int:
    """The 0-based shard of `host` among `count`."""
    digest = hashlib.sha256(host.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(hosts: Iterable[str], index: int, count: int) -> list[str]:
    """The hosts of shard `index` (1-based) of `count`, in their given order."""
    return [h for h in hosts if shard_of(h, count) == index - 1]


def split(hosts: Iterable[str], count: int) -> list[list[str]]:
    """Every host in exactly one of `count` parts, each in the given order."""
    parts: list[list[str]] = [[] for _ in range(count)]
    for host in hosts:
        parts[shard_of(host, count)].append(host)
    return parts
