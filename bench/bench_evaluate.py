"""Controller cost per host: probe output -> typed facts -> verdicts -> JSON report.

Run: .venv/bin/python bench/bench_evaluate.py [HOSTS]
Baseline, measured in the same run: json round trip of the same probe outputs (the least the
controller must do with what Ansible hands back). The ratio shows what facts and rules add.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanner.evaluate import evaluate_host, paused_gc
from scanner.findings import HostReport, ScanReport
from scanner.ingest import from_probe
from scanner.probe import probe_host
from scanner.report import json as json_report
from scanner.resources import rules_dir
from scanner.rules import load_rules


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    raw = json.dumps(probe_host("/"))
    rules = load_rules(rules_dir())

    start = time.process_time()
    for _ in range(hosts):
        json.dumps(json.loads(raw))
    baseline = time.process_time() - start

    def judged() -> list[HostReport]:
        return [evaluate_host(rules, f"host{i}", from_probe(json.loads(raw))) for i in range(hosts)]

    # Timed without tracemalloc, which would slow every allocation; memory in a second pass.
    # Judging (probe output -> facts -> derived facts -> findings) and writing the report
    # (indented JSON of every host) are timed apart: the second grows with the report's size.
    start = time.process_time()
    with paused_gc():
        reports = judged()
        middle = time.process_time()
        text = json_report.render(ScanReport.of(reports))
    end = time.process_time()
    judging, rendering = middle - start, end - middle
    elapsed = end - start
    del reports
    tracemalloc.start()
    with paused_gc():
        json_report.render(ScanReport.of(judged()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def per_host(seconds: float) -> str:
        return f"{seconds / hosts * 1000:.3f} ms CPU/host"

    print(f"hosts: {hosts}, report: {len(text) / 1e6:.1f} MB")
    print(f"baseline (json round trip of the probe output): {per_host(baseline)}")
    print(f"judging (facts + derived + rules): {per_host(judging)}, {judging / baseline:.1f}x")
    print(f"writing the JSON report (indented): {per_host(rendering)}")
    print(
        f"ratio: {elapsed / baseline:.1f}x baseline in all (target <= 5x), judging alone"
        f" {judging / baseline:.1f}x; peak traced memory {peak / 1e6:.0f} MB"
    )
    figures = {
        "hosts": hosts,
        "baseline_cpu_ms_per_host": round(baseline / hosts * 1000, 4),
        "judge_cpu_ms_per_host": round(judging / hosts * 1000, 4),
        "render_cpu_ms_per_host": round(rendering / hosts * 1000, 4),
        "evaluate_cpu_ms_per_host": round(elapsed / hosts * 1000, 4),
        "ratio_to_json_round_trip": round(elapsed / baseline, 2),
        "judge_ratio_to_json_round_trip": round(judging / baseline, 2),
        "peak_traced_mb": round(peak / 1e6, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
