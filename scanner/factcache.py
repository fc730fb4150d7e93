"""Ansible's jsonfile fact cache, read through Ansible's own cache plugin.

ansible-core 2.19 changed the format (files named `s<schema>_<host>`, facts wrapped as a JSON
string under `__payload__`) and may change it again; the installed ansible-core's cache loader
knows its own format, the configured `fact_caching_prefix` and `fact_caching_timeout`
(ansible.cfg, ANSIBLE_CACHE_PLUGIN_* variables). Files the installed version does not claim
(a cache written by ansible-core 2.18 or older, one host per file name) are read through the
same plugin without the schema interposer. Reading never changes the cache: the plugin would
delete a file it finds corrupt, so deletion is disabled here, and such a host is reported,
not dropped; so are hosts whose entry is older than the timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN = "jsonfile"  # ansible.builtin.jsonfile; the short name needs no collection finder


class FactCacheError(ValueError):
    """The directory cannot be read as a fact cache at all; the message names it."""


@dataclass
class CacheEntry:
    """One host of the cache: its facts, or why they could not be read."""

    host: str
    file: str
    facts: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class FactCache:
    directory: Path
    ansible_version: str
    prefix: str
    timeout: float
    entries: list[CacheEntry] = field(default_factory=list)


def _never_delete(key: str) -> None:
    """The jsonfile plugin erases a cache file it cannot parse; a reader must not."""


def read(directory: Path) -> FactCache:
    """Every host the cache at `directory` holds, as the installed ansible-core reads it."""
    try:
        from ansible import release
        from ansible.errors import AnsibleError
        from ansible.plugins.loader import cache_loader
    except ImportError as exc:  # pragma: no cover - ansible-core is a dependency
        raise FactCacheError(f"{directory}: ansible-core is not importable ({exc})") from None
    if not directory.is_dir():
        raise FactCacheError(f"{directory}: not a directory")
    try:
        plugin = cache_loader.get(PLUGIN, _uri=str(directory))
    except (AnsibleError, OSError) as exc:
        raise FactCacheError(f"{directory}: {PLUGIN}: {str(exc).splitlines()[0]}") from None
    raw = getattr(plugin, "__wrapped__", plugin)  # 2.19+: the interposer around the plugin
    raw.delete = _never_delete
    if raw.get_option("_prefix") is None:
        # Unset in the configuration: the plugin writes unprefixed files, but its keys()
        # needs a string.
        raw.set_option("_prefix", "")
    prefix = str(raw.get_option("_prefix"))
    timeout = float(getattr(raw, "_timeout", 0) or 0)
    cache = FactCache(directory, release.__version__, prefix, timeout)
    claimed: set[str] = set()

    def take(reader: Any, key: str, file_name: str) -> None:
        claimed.add(file_name)
        entry = CacheEntry(host=key, file=str(directory / file_name))
        try:
            value = reader.get(key)
        except KeyError:
            entry.problem = f"{entry.file}: expired or vanished while reading"
        except (AnsibleError, ValueError, OSError) as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            what = "corrupt, not valid JSON" if isinstance(cause, ValueError) else "unreadable"
            entry.problem = f"{entry.file}: {what} ({str(cause).splitlines()[0]}); left as it is"
        else:
            if isinstance(value, dict):
                entry.facts = value
            else:
                entry.problem = f"{entry.file}: not a host's facts (got {type(value).__name__})"
        cache.entries.append(entry)

    # The plugin announces that it erases a corrupt file; here it doesn't, so it must not say so.
    import ansible.plugins.cache as cache_module

    loud = cache_module.display
    cache_module.display = _Quiet(loud)
    try:
        _read_entries(cache, plugin, raw, prefix, take, claimed)
    finally:
        cache_module.display = loud
    return cache


class _Quiet:
    """The plugin's display without its warnings (reported per host instead)."""

    def __init__(self, display: Any) -> None:
        self._display = display

    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass

    def error_as_warning(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display, name)


def _read_entries(
    cache: FactCache, plugin: Any, raw: Any, prefix: str, take: Any, claimed: set[str]
) -> None:
    from ansible import release

    directory, timeout = cache.directory, cache.timeout
    wrapped_keys = set(raw.keys())
    for key in sorted(plugin.keys()):
        wrapped = getattr(plugin, "_get_key", lambda k: k)(key)
        take(plugin, key, f"{prefix}{wrapped}")
    for key in sorted(wrapped_keys):
        if f"{prefix}{key}" not in claimed and not _schema_key(key):
            take(raw, key, f"{prefix}{key}")
    for name in sorted(os.listdir(directory)):
        if name.startswith(".") or name in claimed or not (directory / name).is_file():
            continue
        if prefix and not name.startswith(prefix):
            problem = f"does not start with fact_caching_prefix {prefix!r}"
        elif _schema_key(name[len(prefix) :]) and name[len(prefix) :] not in wrapped_keys:
            problem = f"older than fact_caching_timeout ({timeout:g} s)"
        elif _schema_key(name[len(prefix) :]):
            problem = (
                f"written by an ansible-core with another cache schema than {release.__version__}"
            )
        else:
            problem = f"older than fact_caching_timeout ({timeout:g} s)"
        cache.entries.append(
            CacheEntry(
                host=_host_of(name, prefix),
                file=str(directory / name),
                problem=f"{name}: {problem}",
            )
        )


def _schema_key(key: str) -> bool:
    head, sep, _ = key.partition("_")
    return bool(sep) and head[:1] == "s" and head[1:].isdigit()


def _host_of(name: str, prefix: str) -> str:
    key = name[len(prefix) :] if prefix and name.startswith(prefix) else name
    return key.partition("_")[2] if _schema_key(key) else key
