"""Where the playbooks and rules live: inside the wheel, or beside the package in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def playbooks_dir() -> Path:
    return _data_dir("playbooks")


def playbook(name: str) -> Path:
    return playbooks_dir() / name


def collections_dir() -> Path:
    return playbooks_dir() / "collections"


def rules_dir() -> Path:
    return _data_dir("rules")
