"""Benchmark recording a report in the history database, against writing it as JSON.

    .venv/bin/python bench/bench_history.py [--hosts N] [--rules N]

Every sweep, evaluate and gate records its report (per host and rule) after writing it, so
recording must stay a small part of a run. Measured in one run, on one synthetic report of
N hosts x R findings (verdicts varied, a quarter of the hosts changing between reports):
  * baseline: rendering the JSON report and writing it to a file (what --output does);
  * record: Store.record of the same report (a new database, then one with history);
  * record with a sink: the same plus per-fingerprint ticket transitions and the outbox;
  * diff: the two latest runs read back and compared (what `fleetscan diff` does).
Prints ratios to the baseline and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scanner.findings import Finding, HostReport, ScanReport, Verdict, fingerprint  # noqa: E402
from scanner.history import diff  # noqa: E402
from scanner.report import json as json_report  # noqa: E402
from scanner.store import Store  # noqa: E402

VERDICTS = [Verdict.PASS, Verdict.PASS, Verdict.NOT_APPLICABLE, Verdict.AFFECTED, Verdict.AT_RISK]


def report(hosts: int, rules: int, shift: int) -> ScanReport:
    made = []
    for n in range(hosts):
        name = f"host-{n:06d}.dc1.example.com"
        verdict = VERDICTS[(n + shift * (n % 4 == 0)) % len(VERDICTS)]
        findings = [
            Finding(
                rule_id=f"kvm-rule-{r}",
                verdict=verdict if r == 0 else Verdict.NOT_APPLICABLE,
                severity="high",
                title="KVM hangs guests under 5-level paging",
                reason="fix absent",
                fingerprint=fingerprint(name, f"kvm-rule-{r}"),
            )
            for r in range(rules)
        ]
        made.append(HostReport(host=name, verdict=verdict, findings=findings))
    return ScanReport.of(made)


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--hosts", type=int, default=20000)
    options.add_argument("--rules", type=int, default=4)
    args = options.parse_args()
    first, second = report(args.hosts, args.rules, 0), report(args.hosts, args.rules, 1)
    with tempfile.TemporaryDirectory() as work:
        base = Path(work)
        baseline = timed(lambda: (base / "report.json").write_text(json_report.render(first)))
        db = base / "history.sqlite"
        with Store(db) as store:
            record_new = timed(lambda: store.record(first, "sweep"))
            record_more = timed(lambda: store.record(second, "sweep"))
        sinked = base / "sink.sqlite"
        with Store(sinked) as store:
            store.record(first, "sweep", sinks=("webhook=http://127.0.0.1/x",))
            record_sink = timed(
                lambda: store.record(second, "sweep", sinks=("webhook=http://127.0.0.1/x",))
            )
            queued = len(store.pending())
        with Store(db) as store:
            start = time.perf_counter()
            pair = store.last_two("sweep")
            assert pair is not None
            changed = diff(*pair)
            diff_s = time.perf_counter() - start
        size = db.stat().st_size
    figures = {
        "hosts": args.hosts,
        "findings_per_host": args.rules,
        "baseline_json_write_s": round(baseline, 3),
        "record_first_s": round(record_new, 3),
        "record_second_s": round(record_more, 3),
        "record_with_sink_s": round(record_sink, 3),
        "diff_last_two_s": round(diff_s, 3),
        "ratio_record_over_json_write": round(record_more / baseline, 2),
        "ratio_record_with_sink_over_json_write": round(record_sink / baseline, 2),
        "ratio_diff_over_json_write": round(diff_s / baseline, 2),
        "db_bytes_per_host_run": round(size / (2 * args.hosts), 1),
        "outbox_items": queued,
        "hosts_changed": len(changed.newly_affected) + len(changed.resolved),
    }
    print(f"{args.hosts} hosts x {args.rules} findings")
    print(f"baseline, JSON report written:   {baseline:.3f} s")
    print(
        f"record (second report):          {record_more:.3f} s  {figures['ratio_record_over_json_write']}x"
    )
    print(
        f"record with a sink's transitions: {record_sink:.3f} s  {figures['ratio_record_with_sink_over_json_write']}x"
    )
    print(
        f"diff of the last two:            {diff_s:.3f} s  {figures['ratio_diff_over_json_write']}x"
    )
    print(f"database: {figures['db_bytes_per_host_run']} bytes per host and run")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
