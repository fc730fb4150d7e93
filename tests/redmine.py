"""A real Redmine on loopback, from Debian's packages (redmine, redmine-sqlite, thin).

Installed with apt-get when missing (as root; `scripts/setup --test` installs the same).
Debian's package creates a migrated SQLite database with Redmine's default data; the first
run copies it, enables the REST API, adds a project and the "fleetscan fingerprint" issue
custom field with `rails runner` (slow: tens of seconds), and caches the result under
~/.cache/fleetscan/redmine/. Each test session then copies that template into a temporary
Redmine instance (Debian's multi-instance layout, /var/lib/redmine/NAME), gives the admin a
fresh API key, and serves it with thin on a free loopback port until the session ends.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.sshd import free_port

REDMINE = Path("/usr/share/redmine")
INSTANCES = Path("/var/lib/redmine")
PACKAGED_DB = Path("/var/lib/dbconfig-common/sqlite3/redmine/instances/default/redmine_default")
PACKAGES = ("redmine", "redmine-sqlite", "thin")
PROJECT = "fleetscan"
FIELD = "fleetscan fingerprint"

CONFIGURE = f"""
Setting.rest_api_enabled = '1'
project = Project.find_or_create_by!(identifier: '{PROJECT}') do |p|
  p.name = '{PROJECT}'
  p.is_public = true
end
project.trackers = Tracker.all
project.enabled_module_names = ['issue_tracking']
project.save!
IssueCustomField.find_or_create_by!(name: '{FIELD}') do |f|
  f.field_format = 'string'
  f.is_for_all = true
  f.is_filter = true
  f.searchable = true
  f.trackers = Tracker.all
end
User.find_by(login: 'admin').api_key
"""


def unavailable() -> str | None:
    """Why no Redmine can run here, after installing it if we may; None when it can."""
    if not (REDMINE / "config.ru").is_file() or shutil.which("thin") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return "Debian's redmine, redmine-sqlite and thin are not installed (run scripts/setup --test as root)"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
        done = subprocess.run(command, env=env, capture_output=True, timeout=900)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
            done = subprocess.run(command, env=env, capture_output=True, timeout=900)
        if done.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.decode()[-300:]}"
    if not PACKAGED_DB.is_file():
        return f"{PACKAGED_DB} missing: the redmine-sqlite package did not create its database"
    if not os.access(INSTANCES, os.W_OK):
        return f"{INSTANCES} not writable (a test instance is linked there)"
    return None


def _version() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "redmine"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def _instance(root: Path, database: Path) -> None:
    for sub in ("config", "log", "tmp", "files", "public"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "config" / "database.yml").write_text(
        f"production:\n  adapter: sqlite3\n  database: {database}\n  encoding: utf8\n"
    )
    (root / "config" / "secret_key.txt").write_text(secrets.token_hex(64))


def _linked(name: str, root: Path) -> Path:
    link = INSTANCES / name
    if link.is_symlink():
        link.unlink()
    link.symlink_to(root)
    return link


def _env(name: str) -> dict[str, str]:
    return {**os.environ, "REDMINE_INSTANCE": name, "RAILS_ENV": "production"}


def template() -> Path:
    """The configured database, built once per Redmine version and cached."""
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetscan" / "redmine"
    )
    digest = hashlib.sha256(CONFIGURE.encode()).hexdigest()[:12]
    cached = cache / f"template-{_version()}-{digest}.sqlite"
    if cached.is_file():
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    database = work / "db.sqlite"
    _instance(work, database)
    shutil.copyfile(PACKAGED_DB, database)
    name = f"fleetscan-template-{os.getpid()}"
    link = _linked(name, work)
    try:
        subprocess.run(
            ["ruby", "bin/rails", "runner", CONFIGURE],
            cwd=REDMINE,
            env=_env(name),
            check=True,
            capture_output=True,
            timeout=600,
        )
    finally:
        link.unlink()
    shutil.move(database, cached)
    shutil.rmtree(work, ignore_errors=True)
    return cached


@dataclass
class Redmine:
    url: str
    key: str
    root: Path
    name: str
    process: subprocess.Popen[bytes] | None = None

    def get(self, path: str, **params: str) -> dict[str, Any]:
        response = requests.get(
            self.url + path, params=params, headers={"X-Redmine-API-Key": self.key}, timeout=30
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def start(self, boot_timeout: float = 240) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        log = (self.root / "log" / "thin.out").open("ab")
        self.process = subprocess.Popen(
            ["thin", "start", "-a", "127.0.0.1", "-p", str(port), "-e", "production"],
            cwd=REDMINE,
            env=_env(self.name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + boot_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"thin exited {self.process.returncode}: see {log.name}")
            try:
                self.get("/issues.json", limit="1")
                return
            except requests.RequestException:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Redmine did not answer within {boot_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        self.process = None


def running_redmine(base: Path) -> Redmine:
    """A started Redmine instance under `base`; the caller stops it and calls `remove`."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"needs redmine: {reason}")
    database = base / "db.sqlite"
    _instance(base, database)
    shutil.copyfile(template(), database)
    key = secrets.token_hex(20)
    with sqlite3.connect(database) as db:
        db.execute("UPDATE tokens SET value = ? WHERE action = 'api'", (key,))
    name = f"fleetscan-test-{os.getpid()}-{secrets.token_hex(3)}"
    _linked(name, base)
    server = Redmine(f"http://127.0.0.1:{free_port()}", key, base, name)
    try:
        server.start()
    except BaseException:
        remove(server)
        raise
    return server


def remove(server: Redmine) -> None:
    server.stop()
    link = INSTANCES / server.name
    if link.is_symlink():
        link.unlink()
