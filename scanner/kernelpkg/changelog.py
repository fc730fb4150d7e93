"""An RPM header's changelog tags as `rpm -q --changelog` prints them.

The probe reads a kernel's changelog from /usr/share/doc; an RPM keeps it in its header, so
the tree gets it written out in the same form the probe reads on an RPM host.
"""

from __future__ import annotations

import time

from scanner.kernelpkg.errors import Bad

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rpm_changelog(tags: dict[str, list[bytes] | list[int]]) -> bytes | None:
    """The header changelog as `rpm -q --changelog` prints it (dates in UTC)."""
    times, names, texts = (
        tags.get(n, []) for n in ("changelogtime", "changelogname", "changelogtext")
    )
    if not times and not names and not texts:
        return None
    if not len(times) == len(names) == len(texts):
        raise Bad("corrupt rpm: changelog tags of different lengths")
    lines = []
    for when, name, text in zip(times, names, texts, strict=True):
        if not isinstance(when, int) or not isinstance(name, bytes) or not isinstance(text, bytes):
            raise Bad("corrupt rpm: changelog tags of the wrong type")
        day = _day(when)
        lines.append(b"* %s %s\n%s\n\n" % (day.encode(), name, text))
    return b"".join(lines)


def _day(when: int) -> str:
    moment = time.gmtime(when)
    return f"{_DAYS[moment.tm_wday]} {_MONTHS[moment.tm_mon - 1]} {moment.tm_mday:02d} {moment.tm_year}"
