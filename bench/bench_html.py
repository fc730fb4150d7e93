"""The HTML page of a large fleet: 10,000 varied hosts rendered, target under 5 s.

Run: nice -n 10 .venv/bin/python bench/bench_html.py [HOSTS]   (default 10000)

Hosts come from bench_scale's generator (real captures, about 50 kernel releases across
Debian, RHEL and Ubuntu, per-host command lines), judged once by `fleetscan evaluate` into a
saved JSON report. Measured in the same run:
  - rendering the page from a report in memory (what `--html` adds to sweep, evaluate and
    gate), CPU time, the figure the target is about, against the baseline of rendering the
    same report as JSON (what --output costs);
  - `fleetscan report REPORT --html PATH`, the whole command: wall and CPU time, and how much
    of it is reading and validating the saved report; the page's size.
Ends with one line of JSON.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_scale import FLEETSCAN, base_hosts, generate, templates  # noqa: E402

from scanner.findings import ScanReport  # noqa: E402
from scanner.report import html, page  # noqa: E402
from scanner.report import json as json_report  # noqa: E402
from scanner.report.saved import load  # noqa: E402

TARGET_S = 5.0


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory(prefix="fleetscan-bench-html-") as tmp:
        work = Path(tmp)
        facts = work / "hosts.jsonl"
        generate(facts, hosts, templates(base_hosts(work)))
        saved = work / "report.json"
        subprocess.run(
            [
                *FLEETSCAN,
                "evaluate",
                "--facts",
                str(facts),
                "--output",
                str(saved),
                "--no-history",
                "--fail-on",
                "never",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        out = work / "page.html"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [*FLEETSCAN, "report", str(saved), "--html", str(out), "--db", str(work / "none")],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        command_s = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        command_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        size_mb = out.stat().st_size / 1e6

        # In process, CPU time (the machine may be shared): what --html adds to a command that
        # already holds the report, against rendering the same report as JSON.
        start = time.process_time()
        load(saved, slim=True)
        load_s = time.process_time() - start
        full = ScanReport.model_validate_json(saved.read_text())
        start = time.process_time()
        json_report.render(full)
        baseline_s = time.process_time() - start
        start = time.process_time()
        built = page.build(full)
        html.render_page(built)
        page_s = time.process_time() - start

    print(f"hosts: {hosts}, page: {size_mb:.1f} MB")
    print(f"render the page (build + template), CPU: {page_s:.2f} s (target < {TARGET_S:.0f} s)")
    print(f"baseline, the same report as JSON, CPU:  {baseline_s:.2f} s")
    print(f"ratio: page {page_s / baseline_s:.1f}x the JSON rendering")
    print(
        f"fleetscan report --html (whole command): {command_s:.2f} s wall, {command_cpu_s:.2f} s CPU,"
        f" of which reading the saved report {load_s:.2f} s"
    )
    figures = {
        "hosts": hosts,
        "page_render_cpu_s": round(page_s, 3),
        "json_render_baseline_cpu_s": round(baseline_s, 3),
        "ratio_page_to_json": round(page_s / baseline_s, 2),
        "report_command_wall_s": round(command_s, 3),
        "report_command_cpu_s": round(command_cpu_s, 3),
        "saved_report_load_cpu_s": round(load_s, 3),
        "page_mb": round(size_mb, 2),
        "target_s": TARGET_S,
        "render_met": page_s < TARGET_S,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
