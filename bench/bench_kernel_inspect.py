"""Benchmark inspecting a kernel package: extract_kernel on bookworm's current 6.1 image .deb.

    .venv/bin/python bench/bench_kernel_inspect.py [PACKAGE] [--runs N] [--json]

PACKAGE defaults to bookworm's current linux-image-6.1.*-amd64 .deb from the test package cache
(downloaded with apt if needed, see tests/packages.py). Each run extracts in a child process,
so that the figures are that process's own: wall time, CPU time (user + system, from wait4) and
peak RSS (ru_maxrss). Baseline, measured in the same run and the same way: reading the archive
once with the distribution's own tool (`dpkg-deb --fsys-tarfile PKG > /dev/null` for a .deb,
`rpm2cpio PKG > /dev/null` for an .rpm), i.e. decompressing the whole payload and nothing more.
Targets: extraction under 10 s wall and 300 MB peak RSS on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_WALL_S = 10.0
TARGET_RSS_MB = 300.0

# Runs in the child: the extraction alone, timed from after the imports.
CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from scanner.kernelpkg import extract_kernel
with tempfile.TemporaryDirectory() as dest:
    started = time.perf_counter()
    result = extract_kernel(Path(sys.argv[1]), Path(dest))
    elapsed = time.perf_counter() - started
    sizes = {name: (result.root / name).stat().st_size for name in result.files}
print(json.dumps({"extract_s": elapsed, "release": result.release, "package": result.package,
                  "version": result.version, "format": result.format, "files": sizes}))
"""


def _measure(command: list[str], stdout: int | None = subprocess.DEVNULL) -> dict[str, Any]:
    """Wall, CPU and peak RSS of one child process (and the children it waited for)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out if stdout is None else stdout, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{command[0]} failed with exit code {proc.returncode}")
        out.seek(0)
        text = out.read().decode()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "output": text,
    }


def _baseline_command(package: Path) -> list[str] | None:
    with open(package, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"!<arch>\n") and shutil.which("dpkg-deb"):
        return ["dpkg-deb", "--fsys-tarfile", str(package)]
    if magic.startswith(b"\xed\xab\xee\xdb") and shutil.which("rpm2cpio"):
        return ["rpm2cpio", str(package)]
    return None


def _default_package() -> Path:
    import pytest

    from tests.packages import debian_kernel_package

    try:
        return debian_kernel_package("bookworm")
    except pytest.skip.Exception as exc:  # no apt, no network: the helper says why
        raise SystemExit(f"no package to benchmark: {exc}") from None


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path, help="a .deb or .rpm (default: bookworm)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    package = args.package or _default_package()
    baseline_command = _baseline_command(package)

    # Interleaved, so that page-cache and frequency effects hit both alike; the first read warms.
    _measure(["cat", str(package)])
    extracted: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for _ in range(args.runs):
        run = _measure([sys.executable, "-c", CHILD, str(package)], stdout=None)
        run.update(json.loads(run.pop("output")))
        extracted.append(run)
        if baseline_command is not None:
            baseline.append(_measure(baseline_command))

    last = extracted[-1]
    figures: dict[str, Any] = {
        "package": str(package),
        "package_mb": round(package.stat().st_size / 1e6, 1),
        "result": {k: last[k] for k in ("format", "package", "version", "release", "files")},
        "runs": args.runs,
        "extract_process": {
            "wall_s": round(_median(extracted, "wall_s"), 2),
            "cpu_s": round(_median(extracted, "cpu_s"), 2),
            "rss_mb": round(_median(extracted, "rss_mb"), 1),
            "extract_only_wall_s": round(_median(extracted, "extract_s"), 2),
        },
    }
    if baseline:
        figures["baseline"] = {
            "command": " ".join(baseline_command or []) + " > /dev/null",
            "wall_s": round(_median(baseline, "wall_s"), 2),
            "cpu_s": round(_median(baseline, "cpu_s"), 2),
            "rss_mb": round(_median(baseline, "rss_mb"), 1),
        }
        figures["ratios"] = {
            key: round(figures["extract_process"][key] / figures["baseline"][key], 2)
            for key in ("wall_s", "cpu_s", "rss_mb")
        }
    wall, rss = figures["extract_process"]["wall_s"], figures["extract_process"]["rss_mb"]
    figures["targets"] = {
        "wall_s": TARGET_WALL_S,
        "rss_mb": TARGET_RSS_MB,
        "met": wall < TARGET_WALL_S and rss < TARGET_RSS_MB,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0 if figures["targets"]["met"] else 1

    result = figures["result"]
    print(f"{package} ({figures['package_mb']} MB)")
    print(
        f"  {result['format']} {result['package']} {result['version']}, release {result['release']}"
    )
    for name, size in sorted(result["files"].items()):
        print(f"    {size:>10}  {name}")
    print(f"median of {args.runs} runs        {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12}")
    rows = [("extract_kernel (child process)", figures["extract_process"])]
    if baseline:
        rows.append(("baseline: read archive once", figures["baseline"]))
    for label, row in rows:
        print(f"  {label:<30} {row['wall_s']:>8.2f} {row['cpu_s']:>8.2f} {row['rss_mb']:>12.1f}")
    print(
        f"  extraction alone (in the child, after imports): {figures['extract_process']['extract_only_wall_s']:.2f} s"
    )
    if baseline:
        ratios = figures["ratios"]
        print(f"  baseline: {figures['baseline']['command']}")
        print(
            f"  ratio extract / baseline: wall {ratios['wall_s']:.2f}x, "
            f"cpu {ratios['cpu_s']:.2f}x, RSS {ratios['rss_mb']:.2f}x"
        )
    else:
        print("  no baseline tool (dpkg-deb / rpm2cpio) for this package")
    verdict = "met" if figures["targets"]["met"] else "MISSED"
    print(f"target: < {TARGET_WALL_S:.0f} s wall and < {TARGET_RSS_MB:.0f} MB peak RSS: {verdict}")
    return 0 if figures["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
