"""The fan-out's connection resolution: what it honours from the inventory, and what it leaves
to Ansible's per-host path. The ssh command lines are checked as built from Ansible's own
option resolution (ansible-core's config manager, no fakes); the real SSH runs are in
test_sweep.py and test_fleet_faults.py."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PLUGIN = (
    Path(__file__).resolve().parent.parent
    / "playbooks/collections/ansible_collections/fleetscan/kvm/plugins/action/fanout.py"
)


@pytest.fixture(scope="module")
def fanout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetscan_fanout_plugin", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(fanout: ModuleType, **variables: Any) -> tuple[Any, ...]:
    return tuple(fanout._resolve("node-1", {"inventory_hostname": "node-1", **variables}))


def option(argv: list[str], name: str) -> list[str]:
    return [
        argv[i + 1].split("=", 1)[1]
        for i, a in enumerate(argv[:-1])
        if a == "-o" and argv[i + 1].startswith(name + "=")
    ]


def test_inventory_connection_settings_come_first_and_win(fanout: ModuleType) -> None:
    argv, interpreter, become, _user = resolve(
        fanout,
        ansible_host="192.0.2.7",
        ansible_port=2202,
        ansible_user="ops",
        ansible_ssh_private_key_file="~/.ssh/fleet",
        ansible_ssh_common_args="-o ProxyCommand='ssh -W %h:%p jump.example' -o Ciphers=aes256-ctr",
        ansible_ssh_extra_args="-o ConnectionAttempts=2",
        ansible_python_interpreter="/opt/py/bin/python3",
    )
    assert argv[-2:] == ["--", "192.0.2.7"]
    assert option(argv, "ProxyCommand") == ["ssh -W %h:%p jump.example"]
    assert option(argv, "Port") == ["2202"] and option(argv, "User") == ["ops"]
    assert option(argv, "IdentityFile") == [str(Path("~/.ssh/fleet").expanduser())]
    assert option(argv, "ConnectionAttempts") == ["2"]
    # ssh keeps the first value of an option: the inventory's cipher precedes the fan-out's.
    ciphers = option(argv, "Ciphers")
    assert ciphers[0] == "aes256-ctr"
    assert option(argv, "ControlMaster") == ["no"] and option(argv, "BatchMode") == ["yes"]
    assert interpreter == "/opt/py/bin/python3" and become is False


def test_become_through_sudo_and_interpreter_discovery(fanout: ModuleType) -> None:
    _argv, interpreter, become, user = resolve(
        fanout, ansible_become=True, ansible_become_user="auditor"
    )
    assert interpreter is None and become is True and user == "auditor"
    command = fanout.remote_command(None, ["/", "0", 2.0, "hlt", 65], True, "auditor")
    words = shlex.split(command)
    assert words[:6] == ["sudo", "-H", "-n", "-u", "auditor", "--"]
    assert "python3" in words[-1] and "/usr/libexec/platform-python" in words[-1]


@pytest.mark.parametrize(
    "variables",
    [
        {"ansible_connection": "paramiko"},
        {"ansible_connection": "community.docker.docker"},
        {"ansible_password": "not-printed"},
        {"ansible_ssh_pass": "not-printed"},
        {"ansible_become": True, "ansible_become_method": "su"},
        {"ansible_become": True, "ansible_become_password": "not-printed"},
        {"fleetscan_fanout": "false"},
    ],
)
def test_what_it_cannot_honour_goes_to_ansible(
    fanout: ModuleType, variables: dict[str, Any]
) -> None:
    with pytest.raises(fanout.Unsupported) as caught:
        resolve(fanout, **variables)
    assert "not-printed" not in str(caught.value)


def test_payload_runs_on_this_python_from_stdin(fanout: ModuleType, tmp_path: Path) -> None:
    """The compressed payload, fed to a Python on stdin exactly as over ssh, probes a tree."""
    import json
    import subprocess

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n")
    command = fanout.remote_command(
        sys.executable, [str(tmp_path), "0", 2.0, "hlt", 30], False, "root"
    )
    proc = subprocess.run(
        ["/bin/sh", "-c", command], input=fanout.probe_payload(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["root"] == str(tmp_path)
    assert result["items"]["cpuinfo"]["value"]["vendor_id"] == "AuthenticAMD"
