"""fleetscan.kvm.fanout: probe every host of the play over plain ssh from the controller, in one task.

Why: Ansible's per-host executor costs about 170 ms of controller CPU per host whatever the task,
and its module wrapper costs the target a Python start, a zip and a temporary directory. This
action runs once (delegated to localhost) and starts one `ssh` per host itself, many at a time,
feeding the probe (the collection's module_utils, compressed) to the target's Python on stdin.
Nothing is written on the target, so a full or read-only disk does not stop the probe.

Each host's connection is resolved the way the ssh connection plugin resolves it (inventory
variables, ansible.cfg, environment: address, port, user, private key file, ssh_args,
ssh_common_args and ssh_extra_args, so ProxyJump/ProxyCommand, host key checking, connect
timeout, ssh executable) and `become` through sudo without a password. A host it cannot honour
(another connection plugin, a password or key passphrase, become with a password or a method other
than sudo, `fleetscan_fanout: false`) is returned in `fleetscan_fallback`; the playbook probes
those through Ansible's normal per-host path.

Result: `fleetscan_probes` {host: probe output}, `fleetscan_errors` {host: {kind, message}}
(kind unreachable or failed), `fleetscan_fallback` [host], `fleetscan_path` "fanout".
With FLEETSCAN_FANOUT_STREAM set (fleetscan's own sweep sets it), each host's outcome is
appended there as it comes instead, one JSON line per event ({"host", "event": "start"}, then
{"host", "event": "done", "probe" or "error"}): the controller keeps what arrived even if the
run is interrupted, and no multi-megabyte task result travels through Ansible's callbacks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import connection_loader

PROBE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils", "probe")

# Run by the target's Python (2.x included, to say it is too old): the probe's modules arrive
# compressed on stdin and import from memory; arguments come from the command line.
BOOTSTRAP = r'''
import sys, json
if sys.version_info < (3, 6):
    sys.stderr.write("fleetscan: Python %d.%d is too old for the probe (needs 3.6 or later)\n" % sys.version_info[:2])
    sys.exit(3)
import importlib.abc, importlib.util, signal
signal.alarm(int(sys.argv[5]))
P = "fleetscan_probe"
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == P:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        if name.startswith(P + ".") and name[len(P) + 1:] in SOURCES:
            return importlib.util.spec_from_loader(name, self)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        key = "__init__" if module.__name__ == P else module.__name__[len(P) + 1:]
        if key == "__init__":
            module.__path__ = []
        exec(compile(SOURCES[key], "<fleetscan>/" + key + ".py", "exec"), module.__dict__)
sys.meta_path.insert(0, _Finder())
from fleetscan_probe.host import probe_host
result = probe_host(sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), sys.argv[4])
sys.stdout.write(json.dumps(result, separators=(",", ":")))
'''

# What the remote shell runs: decompress stdin and run it (works on Python 2 and 3).
LAUNCH = 'import sys,zlib;exec(zlib.decompress(getattr(sys.stdin,"buffer",sys.stdin).read()))'

# Interpreters tried, in order, when the inventory names none (as Ansible's discovery would).
DISCOVER = ("python3", "/usr/libexec/platform-python", "/usr/bin/python3", "python")

_payload_cache = {}


def probe_payload():
    """The probe's modules and the bootstrap, as one zlib stream (built once per process)."""
    if "payload" not in _payload_cache:
        sources = {}
        for name in sorted(os.listdir(PROBE_DIR)):
            if name.endswith(".py") and name != "__main__.py":
                with open(os.path.join(PROBE_DIR, name), encoding="utf-8") as handle:
                    sources[name[:-3]] = handle.read()
        program = "SOURCES = %r\n%s" % (sources, BOOTSTRAP)
        _payload_cache["payload"] = zlib.compress(program.encode("utf-8"), 9)
    return _payload_cache["payload"]


def _ssh_version():
    if "ssh" not in _payload_cache:
        try:
            out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr
            found = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
            _payload_cache["ssh"] = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        except (OSError, subprocess.SubprocessError):
            _payload_cache["ssh"] = (0, 0)
    return _payload_cache["ssh"]


def fast_options():
    """ssh options that cut the client's and server's CPU per connection; given after the
    inventory's own, so a host's settings win (ssh keeps the first value of an option)."""
    options = [
        "-T",
        "-o", "BatchMode=yes",
        "-o", "ControlMaster=no",
        "-o", "Compression=no",
        "-o", "UpdateHostKeys=no",
    ]
    if _ssh_version() >= (8, 5):
        # Put the cheap key exchange and cipher first, keeping the defaults as fallback.
        options += ["-o", "KexAlgorithms=^curve25519-sha256,curve25519-sha256@libssh.org"]
        options += ["-o", "Ciphers=^aes128-gcm@openssh.com"]
    return options


class Unsupported(Exception):
    """This host's connection can't be honoured by the fan-out: the normal path probes it."""


def _split(args):
    return shlex.split(args) if args else []


def _resolve(host, variables):
    """The ssh command line and remote interpreter for one host, or Unsupported."""
    if str(variables.get("fleetscan_fanout", True)).lower() in ("false", "no", "0", "off"):
        raise Unsupported("fleetscan_fanout is false")
    connection = variables.get("ansible_connection") or C.DEFAULT_TRANSPORT or "ssh"
    connection = str(connection).replace("ansible.builtin.", "").replace("ansible.legacy.", "")
    if connection not in ("ssh", "smart", "local"):
        raise Unsupported("connection %s" % connection)
    become = variables.get("ansible_become")
    become = str(become).lower() in ("true", "yes", "1", "on") if become is not None else C.DEFAULT_BECOME
    become_user = variables.get("ansible_become_user") or C.DEFAULT_BECOME_USER or "root"
    if become:
        method = variables.get("ansible_become_method") or C.DEFAULT_BECOME_METHOD or "sudo"
        if method not in ("sudo", "ansible.builtin.sudo"):
            raise Unsupported("become method %s" % method)
        if variables.get("ansible_become_password") or variables.get("ansible_become_pass"):
            raise Unsupported("become with a password")
    interpreter = variables.get("ansible_python_interpreter")
    interpreter = None if not interpreter or str(interpreter).startswith("auto") else str(interpreter)
    if connection == "local":
        return None, interpreter, become, become_user

    if "ssh-loaded" not in _payload_cache:
        # Loading the plugin registers its option definitions with the config manager.
        connection_loader.get("ssh", class_only=True)
        _payload_cache["ssh-loaded"] = True
    options, origins = C.config.get_plugin_options_and_origins("connection", "ssh", variables=variables)
    if options.get("password") or variables.get("ansible_password") or variables.get("ansible_ssh_pass"):
        raise Unsupported("password authentication")
    if options.get("private_key") or options.get("pkcs11_provider"):
        raise Unsupported("a key given as data or a PKCS#11 provider")
    argv = [options.get("ssh_executable") or "ssh"]
    if origins.get("ssh_args") not in (None, "default"):
        argv += _split(options.get("ssh_args"))
    argv += _split(options.get("ssh_common_args")) + _split(options.get("ssh_extra_args"))
    if options.get("host_key_checking") is False:
        argv += ["-o", "StrictHostKeyChecking=no"]
    if options.get("port"):
        argv += ["-o", "Port=%s" % options["port"]]
    if options.get("private_key_file"):
        argv += ["-o", "IdentityFile=%s" % os.path.expanduser(str(options["private_key_file"]))]
    if options.get("remote_user"):
        argv += ["-o", "User=%s" % options["remote_user"]]
    argv += ["-o", "ConnectTimeout=%s" % options.get("timeout", 10)]
    argv += fast_options()
    address = options.get("host") or host
    argv += ["--", str(address)]
    return argv, interpreter, become, become_user


def remote_command(interpreter, args, become, become_user):
    """The shell command the target runs: its Python reading the payload from stdin."""
    launch = " ".join([shlex.quote(LAUNCH)] + [shlex.quote(str(a)) for a in args])
    if interpreter:
        script = "exec %s -c %s" % (shlex.quote(interpreter), launch)
    else:
        tries = " ".join(shlex.quote(p) for p in DISCOVER)
        script = (
            'for p in %s; do command -v "$p" >/dev/null 2>&1 && exec "$p" -c %s; done; '
            'echo "fleetscan: no python3 (tried %s)" >&2; exit 127' % (tries, launch, " ".join(DISCOVER))
        )
    if become:
        script = "sudo -H -n -u %s -- /bin/sh -c %s" % (shlex.quote(become_user), shlex.quote(script))
    return script


def _last_line(text):
    lines = [
        line.strip() for line in text.splitlines()
        if line.strip() and not line.startswith("Warning: Permanently added")
    ]
    return lines[-1] if lines else ""


def run_one(argv, command, payload, timeout):
    """One host: (probe, None) or (None, {kind, message})."""
    full = (argv + [command]) if argv is not None else ["/bin/sh", "-c", command]
    try:
        proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return None, {"kind": "failed", "message": "cannot run %s: %s" % (full[0], exc.strerror or exc)}
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, {"kind": "failed", "message": "timed out after %d s (--timeout)" % timeout}
    error = _last_line(err.decode("utf-8", "replace"))
    if proc.returncode == 255 and argv is not None and not out:
        return None, {"kind": "unreachable", "message": error or "ssh exited 255 without a message"}
    if proc.returncode != 0:
        if proc.returncode == -14 or proc.returncode == 142:
            error = error or "the probe was stopped by its alarm"
        return None, {"kind": "failed", "message": "exit %d: %s" % (proc.returncode, error or "no message")}
    try:
        return json.loads(out.decode("utf-8")), None
    except ValueError:
        return None, {"kind": "failed", "message": "the probe printed no JSON: %s" % (error or out[:200])}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("root", "canary", "canary_timeout", "timeout", "parallel"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        timeout = int(args.get("timeout", 60))
        parallel = int(args.get("parallel", 32))
        hostvars = task_vars.get("hostvars", {})
        hosts = list(task_vars.get("ansible_play_batch") or task_vars.get("ansible_play_hosts") or [])
        plans, fallback = {}, []
        for host in hosts:
            variables = hostvars[host]
            try:
                argv, interpreter, become, become_user = _resolve(host, variables)
            except Unsupported:
                fallback.append(host)
                continue
            except AnsibleError as exc:
                plans[host] = exc
                continue
            root = variables.get("fleetscan_root") or args.get("root") or "/"
            canary = variables.get("fleetscan_canary", args.get("canary", False))
            canary = str(canary).lower() in ("true", "yes", "1", "on")
            canary_timeout = float(variables.get("fleetscan_canary_timeout", args.get("canary_timeout", 2.0)))
            # Only the check's own guest (hlt): the test guests stay out of the production path.
            probe_args = [root, "1" if canary else "0", canary_timeout, "hlt", timeout + 5]
            plans[host] = (argv, remote_command(interpreter, probe_args, become, become_user))

        payload = probe_payload()
        probes, errors = {}, {}
        stream_path = os.environ.get("FLEETSCAN_FANOUT_STREAM")
        stream = open(stream_path, "a", encoding="utf-8") if stream_path else None
        # On a worker node the stream is relayed to the control node as a courtesy (progress,
        # and what survives the node dying); the task result still carries every host.
        keep = os.environ.get("FLEETSCAN_FANOUT_KEEP") == "1"
        lock = threading.Lock()

        def emit(record):
            line = json.dumps(record, separators=(",", ":")) + "\n"
            with lock:
                stream.write(line)
                stream.flush()

        def one(host):
            plan = plans[host]
            if stream is not None:
                emit({"host": host, "event": "start"})
            if isinstance(plan, Exception):
                probe, error = None, {"kind": "failed", "message": "connection settings: %s" % plan}
            else:
                probe, error = run_one(plan[0], plan[1], payload, timeout)
            if stream is not None:
                emit({"host": host, "event": "done", "probe": probe, "error": error})
                if not keep:
                    return
            with lock:
                if error is None:
                    probes[host] = probe
                else:
                    errors[host] = error

        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(plans) or 1))) as pool:
                list(pool.map(one, list(plans)))
        finally:
            if stream is not None:
                stream.close()
        result.update(
            changed=False,
            fleetscan_path="fanout",
            fleetscan_probes=probes,
            fleetscan_errors=errors,
            fleetscan_fallback=fallback,
            fleetscan_seconds=round(time.monotonic() - started, 3),
        )
        return result
