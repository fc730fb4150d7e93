"""Evaluation and gate at fleet scale: 100,000 varied hosts as JSON Lines.

Run: nice -n 10 .venv/bin/python bench/bench_scale.py [HOSTS]   (default 100000)

Hosts are generated from real captures (tests/trees.py: the shared Debian kernels and the CPU
samples under tests/data/samples, probed and evaluated once per base machine), then varied per
host: a distinct name, one of about 50 kernel releases across Debian, RHEL and Ubuntu (with the
matching os-release), and its own kernel command line (root UUID, crashkernel, sometimes
no5lvl). Every host's facts are re-derived when read, so no two hosts are judged alike by
shortcut: nothing caches by identical facts.

Measured in the same run:
  - `fleetscan evaluate --facts hosts.jsonl --output out.jsonl` and
    `fleetscan gate --kernel-version R --facts hosts.jsonl`: wall time, CPU time of the process
    tree (what a loaded machine does not inflate), and its peak memory (sum of PSS over the
    command and its workers, sampled every 50 ms); history goes to a throwaway database;
  - per host, on one core: judging a host line (parse, validate, derive, evaluate, serialise)
    against a JSON round trip of the same line (json.loads + json.dumps), the baseline.
Targets: under 10 s and 1.5 GB each, ratio at most 5x. Ends with one line of JSON.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scanner.evaluate import paused_gc  # noqa: E402
from scanner.report import jsonl  # noqa: E402
from scanner.resources import rules_dir  # noqa: E402
from scanner.rules import load_rules  # noqa: E402
from scanner.stream import Entry, Judge, host_of  # noqa: E402

FLEETSCAN = [sys.executable, "-m", "scanner.cli"]
CANDIDATE = "6.1.0-56-amd64"

DEBIAN = [f"5.10.0-{n}-amd64" for n in range(18, 34)] + [f"6.1.0-{n}-amd64" for n in range(9, 19)]
RHEL = [
    f"4.18.0-{n}.el8_{m}.x86_64" for n, m in ((348, 5), (372, 6), (425, 7), (477, 8), (513, 9))
] + [f"5.14.0-{n}.el9_{m}.x86_64" for n, m in ((70, 0), (162, 1), (284, 2), (362, 3), (427, 4))]
UBUNTU = (
    [f"5.4.0-{n}-generic" for n in (150, 165, 182)]
    + [f"5.15.0-{n}-generic" for n in (56, 72, 88, 91, 105)]
    + [f"6.8.0-{n}-generic" for n in (31, 45, 52)]
)
OS = {
    "debian": ("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
    "rhel": ("rhel", "9.3", "Red Hat Enterprise Linux 9.3 (Plow)"),
    "ubuntu": ("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"),
}
RELEASES = (
    [(r, "debian") for r in DEBIAN] + [(r, "rhel") for r in RHEL] + [(r, "ubuntu") for r in UBUNTU]
)


def base_hosts(workdir: Path) -> list[dict[str, object]]:
    """One report host per base machine, from real captures, evaluated once."""
    from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

    trees = {
        "genoa-510-5level": debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "genoa-61": debian_host(DEBIAN_61),
        "genoa-510-4level": debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "rome-510": debian_host(DEBIAN_510, cpu_sample="rome-cpuinfo-1.txt"),
        "genoa-61-no-kvm": debian_host(DEBIAN_61, loaded=["ccp"], sys_modules={}),
        "icelake-rhel9": Tree(
            lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64"
        ),
        "genoa-no-config": Tree(cpuinfo=sample("bergamo-cpuinfo-2-guest.txt")),
    }
    roots = []
    for name, tree in trees.items():
        roots += ["--root", str(tree.build(workdir / name))]
    out = workdir / "base.json"
    subprocess.run(
        [*FLEETSCAN, "evaluate", *roots, "--output", str(out), "--no-history"],
        check=False,
        capture_output=True,
    )
    return list(json.loads(out.read_text())["hosts"])


def templates(bases: list[dict[str, object]]) -> list[str]:
    """Each base host as JSON text with markers where a generated host differs."""
    out = []
    for host in bases:
        facts = host["facts"]
        assert isinstance(facts, dict)
        host = {**host, "host": "@HOST@", "kernels": {"running": "@RELEASE@"}}
        facts["hostname"] = "@HOST@"
        facts["kernel"].update(release="@RELEASE@", cmdline="@CMDLINE@")
        facts["os"].update(id="@OSID@", version_id="@OSVERSION@", pretty_name="@OSNAME@")
        out.append(json.dumps(host, separators=(",", ":")))
    return out


def generate(path: Path, hosts: int, bases: list[str]) -> None:
    rng = random.Random(20261202)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(hosts):
            release, family = RELEASES[index % len(RELEASES)]
            os_id, version, pretty = OS[family]
            cmdline = (
                f"BOOT_IMAGE=/vmlinuz-{release} root=UUID={uuid.UUID(int=rng.getrandbits(128))} ro"
                f" crashkernel={rng.choice(('256M', '512M', 'auto'))} quiet"
                + (" no5lvl" if index % 7 == 3 else "")
                + (f" kvm_amd.npt={index % 2}" if index % 11 == 5 else "")
            )
            line = (
                bases[(index * 7919) % len(bases)]
                .replace("@HOST@", f"hv{index:06d}.rack{index // 40:04d}.example")
                .replace("@RELEASE@", release)
                .replace("@CMDLINE@", cmdline)
                .replace("@OSID@", os_id)
                .replace("@OSVERSION@", version)
                .replace("@OSNAME@", pretty)
            )
            handle.write(line + "\n")


def _tree_pss_kb(root: int) -> int:
    """PSS of a process and all its descendants (shared pages counted once, proportionally)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds of the process tree, peak tree PSS in MB, exit code.

    CPU time is what the machine's load does not inflate: on a shared machine wall time
    also counts the time other processes held the cores."""
    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_kb(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):
        sys.stderr.write(err.decode(errors="replace"))
    return wall, cpu, peak / 1024, proc.returncode


def per_host_ratio(path: Path, sample: int = 2000) -> tuple[float, float]:
    """CPU ms per host: JSON round trip vs judging the same line, one core, same lines."""
    with path.open("rb") as handle:
        lines = [line for _, line in zip(range(sample), handle, strict=False)]
    judge = Judge(load_rules(rules_dir()))
    with paused_gc():
        start = time.process_time()
        for line in lines:
            json.dumps(json.loads(line))
        baseline = time.process_time() - start
        start = time.process_time()
        for number, line in enumerate(lines):
            host = host_of(Entry(where=f"line {number}", text=line))
            assert isinstance(host, tuple)
            jsonl.host(judge(*host))
        judged = time.process_time() - start
    return baseline / sample * 1000, judged / sample * 1000


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="fleetscan-bench-") as private:
        work = Path(private)
        start = time.perf_counter()
        bases = templates(base_hosts(work))
        facts = work / "hosts.jsonl"
        generate(facts, hosts, bases)
        size = facts.stat().st_size
        print(
            f"generated {hosts} hosts from {len(bases)} captured machines x {len(RELEASES)}"
            f" kernel releases: {size / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(work / "state")}
        out = work / "out.jsonl"
        load = os.getloadavg()[0]
        ev_wall, ev_cpu, ev_mb, ev_rc = measure(
            [*FLEETSCAN, "evaluate", "--facts", str(facts), "--output", str(out)], env
        )
        with out.open("rb") as handle:
            written = sum(1 for _ in handle) - 2
        print(
            f"evaluate --facts --output out.jsonl: {ev_wall:.1f} s wall, {ev_cpu:.1f} s CPU,"
            f" peak {ev_mb:.0f} MB (exit {ev_rc}, {written} host lines)"
        )
        gate_wall, gate_cpu, gate_mb, gate_rc = measure(
            [*FLEETSCAN, "gate", "--kernel-version", CANDIDATE, "--facts", str(facts)], env
        )
        print(
            f"gate --kernel-version {CANDIDATE}: {gate_wall:.1f} s wall, {gate_cpu:.1f} s CPU,"
            f" peak {gate_mb:.0f} MB (exit {gate_rc})"
        )
        load = max(load, os.getloadavg()[0])
        baseline_ms, judged_ms = per_host_ratio(facts)
        ratio = judged_ms / baseline_ms
        print(
            f"per host, one core: JSON round trip {baseline_ms:.3f} ms, judged {judged_ms:.3f} ms:"
            f" {ratio:.1f}x (target <= 5x)"
        )
        cores = len(os.sched_getaffinity(0))
        print(
            f"targets (10 s, 1536 MB): evaluate {ev_wall / 10:.2f}x of time, {ev_mb / 1536:.2f}x of"
            f" memory; gate {gate_wall / 10:.2f}x of time, {gate_mb / 1536:.2f}x of memory"
            f" (load average {load:.1f} on {cores} cores; CPU / cores would be"
            f" {ev_cpu / cores:.1f} s and {gate_cpu / cores:.1f} s on idle cores)"
        )
        print(
            json.dumps(
                {
                    "hosts": hosts,
                    "input_mb": round(size / 1e6, 1),
                    "evaluate_wall_s": round(ev_wall, 2),
                    "evaluate_cpu_s": round(ev_cpu, 2),
                    "evaluate_peak_pss_mb": round(ev_mb),
                    "gate_wall_s": round(gate_wall, 2),
                    "gate_cpu_s": round(gate_cpu, 2),
                    "gate_peak_pss_mb": round(gate_mb),
                    "json_round_trip_ms_per_host": round(baseline_ms, 4),
                    "judge_ms_per_host": round(judged_ms, 4),
                    "ratio_to_json_round_trip": round(ratio, 2),
                    "cores": len(os.sched_getaffinity(0)),
                    "load_average_1min": round(load, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
