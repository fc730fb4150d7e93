"""The probe's cost on a production hypervisor: CPU time and peak memory of one whole probe.

Run: .venv/bin/python bench/bench_probe.py [ROUNDS]
Each measurement is a fresh child process (CPU = user + system of the child and what it
spawned, peak = its max RSS). Baseline, measured in the same run: a child that only starts
Python and imports the probe. Targets: probe under 150 ms CPU and 60 MB peak.
Scenarios: this machine (live), and a worst-case tree from the Debian 6.1 artefacts
(xz-compressed kvm.ko and kvm-amd.ko, the 1.3 MB changelog, a 200k-line kallsyms, a dmesg).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.trees import DEBIAN_61, debian_host, kallsyms_of, kernels_dir  # noqa: E402

TARGET_CPU_MS, TARGET_PEAK_MB = 150, 60


_REPORT = """
import json, resource
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"cpu_ms": sum(u.ru_utime + u.ru_stime for u in usage) * 1000, "peak_mb": peak / 1024}))
"""


def child(code: str) -> tuple[float, float]:
    """(CPU ms, peak MB) of a fresh Python running `code`, its own children's CPU included.

    The peak is the child's VmHWM: ru_maxrss would carry this process's size over the exec.
    """
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_REPORT}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(proc.stdout.splitlines()[-1])
    return figures["cpu_ms"], figures["peak_mb"]


def measure(code: str, rounds: int) -> tuple[float, float]:
    runs = [child(code) for _ in range(rounds)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def worst_case_tree(base: Path) -> Path | None:
    kernels = kernels_dir()
    if kernels is None:
        return None
    big_kallsyms = "".join(f"ffffffff81{i:06x} t filler_symbol_{i}\n" for i in range(200_000))
    tree = debian_host(
        DEBIAN_61,
        compression="xz",
        kallsyms=big_kallsyms + kallsyms_of(kernels / DEBIAN_61 / "kvm.ko"),
        dmesg="[77150.781947] CR2: 00007f3c1c0e3000 CR3: 000000010b8f2000 CR4: 0000000000771ee0\n",
    )
    return tree.build(base / "worst-case")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    baseline_cpu, baseline_peak = measure("import scanner.probe", rounds)
    print(f"baseline (python + import): {baseline_cpu:.0f} ms CPU, {baseline_peak:.0f} MB peak")
    with tempfile.TemporaryDirectory() as scratch:
        scenarios = {"this machine (live)": "/"}
        tree = worst_case_tree(Path(scratch))
        if tree is None:
            print("worst-case tree: skipped (no Debian kernel artefacts; see tests/trees.py)")
        else:
            scenarios["worst-case tree (Debian 6.1, xz)"] = str(tree)
        for name, root in scenarios.items():
            cpu, peak = measure(
                f"from scanner.probe import probe_host; probe_host({root!r})", rounds
            )
            probe_cpu = cpu - baseline_cpu
            verdict = "ok" if probe_cpu < TARGET_CPU_MS and peak < TARGET_PEAK_MB else "OVER TARGET"
            print(
                f"{name}: {cpu:.0f} ms CPU ({cpu / baseline_cpu:.1f}x baseline; probe alone {probe_cpu:.0f} ms), "
                f"{peak:.0f} MB peak ({peak / baseline_peak:.1f}x baseline) [{verdict}]"
            )


if __name__ == "__main__":
    main()
