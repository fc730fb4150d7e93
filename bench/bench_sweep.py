"""Sweep cost on a fleet of real SSH hosts: fleetscan's default path against Ansible's own.

Run (as root): .venv/bin/python bench/bench_sweep.py [--hosts 200] [--forks 10] [--rounds 1]
                                                     [--candidates]

Starts a namespace fleet (tests/fleet.py: one network namespace, address and sshd per host,
each host its own ControlPath and a captured machine's tree), then, interleaved per round:
  - fleetscan: `fleetscan sweep -i INVENTORY --forks N` as a user runs it (default path);
  - baseline: `ansible-playbook` of a play with `gather_facts: true` and the same probe as a
    module (fleetscan.kvm.probe, pipelining on, Ansible's default ssh_args), same forks.
With --candidates, also the alternatives measured for the default: Ansible's per-host module
path of sweep.yml (`fleetscan_fanout=false`), and the fan-out at 8 and 64 connections at once.

Measured per run: wall time (hosts/s); controller CPU, every process the command starts
including ssh ControlPersist masters that outlive it (a cpuacct cgroup); target CPU, every
sshd and session of the fleet (a second cgroup); controller peak memory (sum of the resident
sets of the controller cgroup's processes, sampled every 50 ms). Between runs the baseline's
ControlPersist masters are ended so no run reuses another's connections. Every fleetscan run
must give every host its expected verdict, every baseline run must probe every host.
Prints ratios (fleetscan / baseline) and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scanner.resources import collections_dir  # noqa: E402
from tests.fleet import MACHINES, HostSpec, running_fleet, unavailable_reason  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CGROUP = Path("/sys/fs/cgroup/cpuacct")

BASELINE = """\
- name: baseline, Ansible's fact gathering and the probe as a module
  hosts: all
  gather_facts: true
  tasks:
    - name: Probe
      fleetscan.kvm.probe:
        root: "{{ fleetscan_root | default('/') }}"
"""


class Group:
    """A cpuacct cgroup: CPU of every process in it, whether or not anyone waits for them."""

    def __init__(self, name: str) -> None:
        self.path = CGROUP / name
        self.path.mkdir()

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def cpu_seconds(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def rss_bytes(self) -> int:
        page = os.sysconf("SC_PAGE_SIZE")
        total = 0
        for pid in self.pids():
            with suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        return total

    def kill_all(self) -> None:
        for _round in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def remove(self) -> None:
        self.kill_all()
        with suppress(OSError):
            self.path.rmdir()


def measure(
    name: str, argv: list[str], env: dict[str, str], controller: Group, targets: Group, log: Path
) -> dict[str, Any]:
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], controller.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    cpu_before, target_before = controller.cpu_seconds(), targets.cpu_seconds()
    started = time.monotonic()
    sampler.start()
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if name != "fleetscan" else subprocess.DEVNULL,
            preexec_fn=lambda: controller.add(os.getpid()),
        )
        code = proc.wait()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    # ControlPersist masters outlive the command: their CPU counts, then they are ended so the
    # next run starts cold (and the targets' sessions close).
    controller.kill_all()
    time.sleep(0.5)
    return {
        "name": name,
        "code": code,
        "wall_s": wall,
        "controller_cpu_s": controller.cpu_seconds() - cpu_before,
        "target_cpu_s": targets.cpu_seconds() - target_before,
        "peak_mb": peak[0] / 2**20,
        "log": log,
    }


def check_fleetscan(run: dict[str, Any], expected: dict[str, str]) -> None:
    report = json.loads(run["log"].read_text())
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    wrong = {h: (v, expected[h]) for h, v in verdicts.items() if v != expected.get(h)}
    if run["code"] != 0 or wrong or len(verdicts) != len(expected):
        raise SystemExit(
            f"{run['name']}: wrong verdicts {list(wrong.items())[:3]} (exit {run['code']})"
        )


def check_playbook(run: dict[str, Any], hosts: int | None) -> None:
    recap = [line for line in run["log"].read_text().splitlines() if " : ok=" in line]
    bad = [line for line in recap if " failed=0 " not in line or " unreachable=0 " not in line]
    if run["code"] != 0 or (hosts is not None and len(recap) != hosts) or bad:
        raise SystemExit(f"{run['name']}: {len(recap)} hosts in the recap, failing: {bad[:3]}")


def per_host(run: dict[str, Any], hosts: int) -> dict[str, float]:
    return {
        "hosts_per_s": hosts / run["wall_s"],
        "controller_cpu_ms_per_host": run["controller_cpu_s"] * 1000 / hosts,
        "target_cpu_ms_per_host": run["target_cpu_s"] * 1000 / hosts,
        "controller_peak_mb": run["peak_mb"],
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--candidates", action="store_true")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench_sweep: {reason}")
    if not CGROUP.is_dir():
        raise SystemExit(f"bench_sweep: {CGROUP} missing (cgroup v1 cpuacct measures CPU here)")

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    kinds = sorted(MACHINES)
    specs = [HostSpec(f"node-{i:03d}", kinds[i % len(kinds)]) for i in range(args.hosts)]
    tag = f"fleetscan-bench-{os.getpid()}"
    controller, targets = Group(f"{tag}-controller"), Group(f"{tag}-targets")
    try:
        with running_fleet(work / "fleet", specs) as fleet:
            for host in fleet.hosts:
                if host.process is not None:
                    targets.add(host.process.pid)
            inventory = fleet.write_inventory(work / "inventory")
            expected = {h.name: h.expected for h in fleet.hosts}
            (work / "baseline.yml").write_text(BASELINE)
            (work / "state").mkdir()
            env = {
                **os.environ,
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "XDG_STATE_HOME": str(work / "state"),
                "ANSIBLE_COLLECTIONS_PATH": str(collections_dir()),
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_NOCOLOR": "True",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
            }
            fleetscan = [str(VENV_BIN / "fleetscan"), "sweep", "-i", str(inventory)]
            fleetscan += ["--forks", str(args.forks), "--format", "json", "--fail-on", "never"]
            playbook = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory)]
            playbook += ["-f", str(args.forks)]
            commands: dict[str, list[str]] = {
                "fleetscan": fleetscan,
                "baseline": [*playbook, str(work / "baseline.yml")],
            }
            sweep_yml = str(REPO / "playbooks" / "sweep.yml")
            if args.candidates:
                commands["module-path"] = [*playbook, sweep_yml, "-e", "fleetscan_fanout=false"]
                for parallel in (8, 64):
                    commands[f"fanout-{parallel}"] = [
                        *playbook,
                        sweep_yml,
                        "-e",
                        f"fleetscan_fanout_parallel={parallel}",
                    ]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
            print(
                f"bench_sweep: {args.hosts} hosts ({len(kinds)} machine kinds), forks "
                f"{args.forks}, {args.rounds} round(s), fleet up",
                flush=True,
            )
            for round_number in range(args.rounds):
                for name, argv in commands.items():
                    log = work / f"{name}-{round_number}.log"
                    run = measure(name, argv, env, controller, targets, log)
                    if name == "fleetscan":
                        check_fleetscan(run, expected)
                    else:
                        check_playbook(run, args.hosts if name == "baseline" else None)
                    runs[name].append(run)
                    figures = per_host(run, args.hosts)
                    print(
                        f"  round {round_number + 1} {name:12s} {run['wall_s']:6.1f} s  "
                        f"{figures['hosts_per_s']:6.2f} hosts/s  controller "
                        f"{figures['controller_cpu_ms_per_host']:6.1f} ms/host  target "
                        f"{figures['target_cpu_ms_per_host']:6.1f} ms/host  peak "
                        f"{figures['controller_peak_mb']:6.0f} MB",
                        flush=True,
                    )
    finally:
        controller.remove()
        targets.remove()
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, dict[str, float]] = {}
    for name, measured in runs.items():
        figures = [per_host(r, args.hosts) for r in measured]
        summary[name] = {key: median([f[key] for f in figures]) for key in figures[0]}
    ours, base = summary["fleetscan"], summary["baseline"]
    speedup = ours["hosts_per_s"] / base["hosts_per_s"]
    controller_ratio = ours["controller_cpu_ms_per_host"] / base["controller_cpu_ms_per_host"]
    target_ratio = ours["target_cpu_ms_per_host"] / base["target_cpu_ms_per_host"]
    print(f"fleetscan vs baseline: {speedup:.2f}x hosts/s (target >= 5x)")
    print(f"  controller CPU per host: {controller_ratio:.2f}x of the baseline (target <= 0.33x)")
    print(f"  target CPU per host:     {target_ratio:.2f}x of the baseline (target <= 0.33x)")
    print(
        f"  controller peak memory:  {ours['controller_peak_mb']:.0f} MB vs "
        f"{base['controller_peak_mb']:.0f} MB"
    )
    result: dict[str, Any] = {
        "hosts": args.hosts,
        "forks": args.forks,
        "rounds": args.rounds,
        "speedup_hosts_per_s_x": round(speedup, 2),
        "controller_cpu_ratio_x": round(controller_ratio, 3),
        "target_cpu_ratio_x": round(target_ratio, 3),
    }
    for name, figures in summary.items():
        prefix = name.replace("-", "_")
        for key, value in figures.items():
            result[f"{prefix}_{key}"] = round(value, 2)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
