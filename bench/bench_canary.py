"""Benchmark the reset-vector canary's healthy path on this machine's /dev/kvm.

    .venv/bin/python bench/bench_canary.py [--spawns N] [--runs N] [--json]

Measures, in one run so that the ratios compare like with like:
  * baseline: spawning ``python -c pass`` (bare interpreter start and exit);
  * end to end: spawning ``python scanner/probe/canary.py`` (process start to verdict);
  * in process: ``run_canary()`` wall time, and the KVM_RUN time it reports.
Target: the canary itself (in process) under 50 ms wall.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CANARY = ROOT / "scanner" / "probe" / "canary.py"
TARGET_MS = 50.0


def _load_canary() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetscan_canary_bench", CANARY)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 3),
        "p90_ms": round(_pct(values, 0.9), 3),
        "min_ms": round(min(values), 3),
    }


def _spawn(cmd: list[str], n: int, check_ok: bool) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        times.append((time.perf_counter() - t) * 1000.0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed: {proc.stderr}")
        if check_ok:
            verdict = json.loads(proc.stdout)
            if verdict.get("outcome") != "ok":
                raise SystemExit(f"canary verdict is not ok: {verdict}")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=30, help="process spawns per command")
    ap.add_argument("--runs", type=int, default=200, help="in-process run_canary() calls")
    ap.add_argument("--device", default="/dev/kvm")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if not os.path.exists(args.device):
        print(f"no {args.device} on this machine: nothing to benchmark", file=sys.stderr)
        return 2

    canary = _load_canary()
    first = canary.run_canary(args.device)
    if first.get("outcome") != "ok":
        print(f"canary is not healthy here, benchmark meaningless: {first}")
        return 1

    py = sys.executable
    # Interleave warm-ups so that page-cache effects hit both commands alike.
    _spawn([py, "-c", "pass"], 3, False)
    _spawn([py, str(CANARY)], 3, True)
    baseline = _spawn([py, "-c", "pass"], args.spawns, False)
    spawned = _spawn([py, str(CANARY), "--device", args.device], args.spawns, True)

    wall: list[float] = []
    kvm_run: list[float] = []
    for _ in range(args.runs):
        t = time.perf_counter()
        verdict = canary.run_canary(args.device)
        wall.append((time.perf_counter() - t) * 1000.0)
        kvm_run.append(float(verdict["elapsed_ms"]))
        if verdict["outcome"] != "ok":
            raise SystemExit(f"canary verdict is not ok: {verdict}")

    base_med = statistics.median(baseline)
    spawn_med = statistics.median(spawned)
    wall_med = statistics.median(wall)
    figures: dict[str, Any] = {
        "python": sys.version.split()[0],
        "kernel": first.get("kernel"),
        "kvm_modules": first.get("kvm_modules"),
        "baseline_spawn_python_c_pass": _summary(baseline),
        "canary_spawn_end_to_end": _summary(spawned),
        "canary_in_process_wall": _summary(wall),
        "canary_in_process_kvm_run": _summary(kvm_run),
        "ratio_spawn_over_baseline": round(spawn_med / base_med, 3),
        "canary_spawn_overhead_ms": round(spawn_med - base_med, 3),
        "ratio_in_process_over_baseline": round(wall_med / base_med, 4),
        "target_ms": TARGET_MS,
        "target_met": wall_med < TARGET_MS and _pct(wall, 0.9) < TARGET_MS,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    rows = [
        ("baseline: spawn python -c pass", figures["baseline_spawn_python_c_pass"]),
        ("spawn canary.py (start to verdict)", figures["canary_spawn_end_to_end"]),
        ("run_canary() in process, wall", figures["canary_in_process_wall"]),
        ("  of which KVM_RUN", figures["canary_in_process_kvm_run"]),
    ]
    print(
        "python {}  kernel {}  kvm modules {}".format(
            figures["python"], figures["kernel"], figures["kvm_modules"]
        )
    )
    print("{:<38} {:>6} {:>11} {:>11} {:>11}".format("", "n", "median ms", "p90 ms", "min ms"))
    for label, s in rows:
        print(
            "{:<38} {:>6} {:>11.3f} {:>11.3f} {:>11.3f}".format(
                label, s["n"], s["median_ms"], s["p90_ms"], s["min_ms"]
            )
        )
    print(
        "spawned canary / baseline (median):   {:.3f}x  (+{:.3f} ms over bare start)".format(
            figures["ratio_spawn_over_baseline"], figures["canary_spawn_overhead_ms"]
        )
    )
    print(
        "in-process canary / baseline (median): {:.4f}x".format(
            figures["ratio_in_process_over_baseline"]
        )
    )
    print(
        "target: canary itself < {:.0f} ms wall: {}".format(
            TARGET_MS, "met" if figures["target_met"] else "MISSED"
        )
    )
    return 0 if figures["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
