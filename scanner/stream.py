"""Saved hosts as a stream: one host's parsed facts at a time, judged on every core.

`evaluate --facts` and `gate --facts` read JSON Lines (host objects as in a report, or
{"host": ..., "probe": ...} raw probe output) and saved JSON reports through `read_entries`,
which never holds more than one host's parsed JSON. A line that is not JSON is a `BadLine`
(file and line number); the hosts around it are still judged and the command exits 2 at the
end. Inputs past `stream_bytes()` are judged in a process pool (each worker parses, derives,
evaluates and serialises its hosts): a JSON Lines file in spans of whole lines that each
worker reads itself, a JSON report in chunks of parsed hosts. The caller keeps only a thin
copy of each host's report (no facts, no evidence) for the table, history and exit code.

The JSON report splitter is written by hand over `json.JSONDecoder.raw_decode` rather than
with ijson: raw_decode is the standard library's C scanner, parsing one host at a time at the
speed of json.loads, and a report is a known shape (an object whose `hosts` is a list).
"""

from __future__ import annotations

import codecs
import json
import os
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scanner.derive import derive_all
from scanner.evaluate import evaluate_host, failed_host, paused_gc
from scanner.facts import HostFacts
from scanner.findings import HostError, HostReport, Kernels, Verdict
from scanner.inputs import InputError, host_from_entry, host_from_raw
from scanner.report import jsonl
from scanner.rules import Rule
from scanner.validation import show

if TYPE_CHECKING:
    from scanner.candidate import Candidate

# Hosts per task: large enough that pickling a chunk is cheap next to judging it.
CHUNK = 256
_READ = 1 << 20
_LONGEST = 256 << 20  # no host of a report is near this; a broken one fails before it


def stream_bytes() -> int:
    """Inputs larger than this are judged in worker processes and kept thin (default 32 MiB)."""
    return int(os.environ.get("FLEETSCAN_STREAM_BYTES", str(32 << 20)))


def workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@dataclass(frozen=True)
class BadLine:
    """Input that is not a host: where (FILE:LINE) and why, in one line."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Entry:
    """One input record, still as text (JSON Lines) or already parsed (a report's host)."""

    where: str
    text: bytes | None = None
    value: Any = None
    meta: bool = False  # a JSON report's top-level fields, not a host


Host = tuple[str, HostFacts | HostError]


def is_jsonl(path: Path) -> bool:
    """JSON Lines by name (.jsonl, .ndjson), or a first line that is a whole JSON object
    followed by more (a pretty-printed report's first line is a lone brace)."""
    if path.suffix in (".jsonl", ".ndjson"):
        return True
    try:
        with path.open("rb") as handle:
            first = handle.readline(64 << 20)
            rest = handle.read(4096)
    except OSError:
        return False
    if not rest.strip():
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def is_report(path: Path) -> bool:
    """A saved JSON report: an object whose first keys are the report's, before `hosts`."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith(b"{") and b'"schema_version"' in head


def _jsonl_entries(path: Path, handle: IO[bytes]) -> Iterator[Entry]:
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield Entry(where=f"{path}:{number}", text=line)


class _Splitter:
    """The top level of a JSON report, read in pieces; each host parsed on its own."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.scanner = json.JSONDecoder()
        self.text = ""
        self.pos = 0
        self.line = 1  # line number of self.pos
        self.eof = False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(_READ)
        self.eof = not chunk
        self.line += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos :] + self.decoder.decode(chunk, final=self.eof)
        self.pos = 0
        return True

    def where(self) -> str:
        return f"{self.path}:{self.line + self.text.count(chr(10), 0, self.pos)}"

    def skip(self) -> str:
        """Skip whitespace; the next character ('' at the end)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def expect(self, characters: str) -> str:
        found = self.skip()
        if not found or found not in characters:
            raise InputError(f"{self.where()}: not a JSON report (expected {characters!r})")
        self.pos += 1
        return found

    def value(self) -> Any:
        self.skip()
        while True:
            try:
                value, end = self.scanner.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                # Perhaps only cut off by the end of what was read so far: read more and retry
                # (the error's position is where the cut value started, not where text ran
                # out). Past _LONGEST of text for one value, or at the end, it is broken here.
                if len(self.text) - self.pos < _LONGEST and self._more():
                    continue
                self.pos = min(exc.pos, len(self.text))
                raise InputError(f"{self.where()}: not JSON ({exc.msg})") from None
            self.pos = end
            return value


def _report_entries(path: Path, handle: IO[bytes]) -> Iterator[Entry]:
    """The report's hosts, each an Entry; its other top-level fields as one header-like
    Entry before the hosts (and one after them, for fields that follow the hosts)."""
    split = _Splitter(path, handle)
    split.expect("{")
    if split.skip() == "}":
        return
    seen_hosts = False
    meta: dict[str, Any] = {}
    while True:
        key = split.value()
        split.expect(":")
        if key == "hosts":
            seen_hosts = True
            if split.skip() != "[":
                raise InputError(
                    f"{path}: hosts: expected a list of host objects (a fleetscan report), "
                    f"got {show(split.value())}"
                )
            if meta:
                yield Entry(where=str(path), value=meta, meta=True)
                meta = {}
            split.expect("[")
            if split.skip() == "]":
                split.pos += 1
            else:
                index = 0
                while True:
                    where = f"{path}: hosts.{index}"
                    yield Entry(where=where, value=split.value())
                    index += 1
                    if split.expect(",]") == "]":
                        break
        else:
            meta[str(key)] = split.value()
        if split.expect(",}") == "}":
            if not seen_hosts:
                raise InputError(
                    f"{path}: hosts: expected a list of host objects (a fleetscan report), "
                    "got nothing"
                )
            if meta:
                yield Entry(where=str(path), value=meta, meta=True)
            return


def read_entries(path: Path) -> Iterator[Entry | BadLine]:
    """Every record of a JSON Lines file or saved JSON report, one at a time."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        if is_jsonl(path):
            yield from _jsonl_entries(path, handle)
            return
        hosts = 0
        try:
            for entry in _report_entries(path, handle):
                hosts += not entry.meta
                yield entry
        except InputError as exc:
            if not hosts:
                raise  # not a report at all: one line, exit 2, nothing to keep
            # A broken report cannot be resynchronised: the hosts before it stand.
            where, _, message = str(exc).partition(": ")
            yield BadLine(where, message)


def stream_entries(path: Path) -> Iterator[Entry | BadLine | Span]:
    """Like read_entries, but a JSON Lines file comes as Spans for the workers to read."""
    if path.is_file() and is_jsonl(path):
        try:
            yield from spans(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror})") from None
        return
    yield from read_entries(path)


class _SavedHost(BaseModel):
    """A report's host line with facts: parsed and validated in one pass by pydantic-core."""

    model_config = ConfigDict(extra="ignore")
    host: str = Field(min_length=1)
    facts: HostFacts


def _fast_host(text: bytes) -> Host | None:
    """A host line with facts, without building its findings as Python objects (they are
    judged anew); None when the line is anything else, for the general path to say what."""
    if b'"probe"' in text or b'"facts"' not in text:
        return None
    try:
        saved = _SavedHost.model_validate_json(text)
    except ValidationError:
        return None
    return saved.host, derive_all(saved.facts)


def host_of(entry: Entry) -> Host | BadLine | None:
    """The host an entry describes; None for a JSON Lines header or trailer."""
    item = entry.value
    if entry.text is not None:
        fast = _fast_host(entry.text)
        if fast is not None:
            return fast
        try:
            item = json.loads(entry.text)
        except ValueError as exc:
            return BadLine(entry.where, f"not JSON ({str(exc).split(':')[0]})")
    if not isinstance(item, dict):
        return BadLine(entry.where, "expected a JSON object")
    name = item.get("host")
    if name is None:
        if entry.meta or "schema_version" in item or "summary" in item:
            return None  # header or trailer, or a JSON report's top-level fields
        return BadLine(entry.where, 'expected a host object ("host" with "facts" or "probe")')
    if not isinstance(name, str) or not name:
        return BadLine(entry.where, "host: expected a non-empty string")
    if "probe" in item:
        return name, host_from_raw(name, item["probe"], entry.where)
    try:
        return name, host_from_entry(item, entry.where)
    except InputError as exc:
        return BadLine(entry.where, str(exc).removeprefix(f"{entry.where}: "))


class Judge:
    """Judges one host: as it runs now, or (gate) as it will be after booting a candidate."""

    def __init__(
        self, rules: list[Rule], candidate: Candidate | None = None, evidence: bool = False
    ) -> None:
        self.rules = rules
        self.candidate = candidate
        # Keep the evidence of findings that need action in streamed thin reports (--junit).
        self.evidence = evidence
        # Serialise each host's report line (not when no output takes it, as in a bare gate).
        self.lines = True

    def __call__(self, name: str, outcome: HostFacts | HostError) -> HostReport:
        if isinstance(outcome, HostError):
            return failed_host(self.rules, name, outcome)
        if self.candidate is None:
            return evaluate_host(self.rules, name, outcome)
        from scanner.candidate import predict

        report = evaluate_host(self.rules, name, predict(outcome, self.candidate))
        report.kernels = Kernels(
            running=outcome.kernel.release,
            next_boot=outcome.boot.default_release,
            candidate=self.candidate.identity.release,
        )
        return report


# Findings whose evidence a thin report keeps for --junit: affected, at_risk, unknown.
ACTION_RANKS = frozenset(v.rank for v in (Verdict.AFFECTED, Verdict.AT_RISK, Verdict.UNKNOWN))


def thin_json(report: HostReport, evidence: bool = False) -> bytes:
    """What the table, history and exit code need of a host, as JSON: no facts, and no
    evidence unless `evidence` (a JUnit file shows it for the findings that need action).
    Serialised straight from the full report, and sent as JSON from a worker: a tenth of the
    cost of copying and pickling the model."""
    drop = {
        index: {"evidence"}
        for index, finding in enumerate(report.findings)
        if not (evidence and finding.verdict.rank in ACTION_RANKS)
    }
    return report.model_dump_json(exclude={"facts": True, "findings": drop}).encode()


@dataclass
class Judged:
    """A judged host: its report line (JSON Lines) and its (thin, when streamed) report."""

    line: str
    report: HostReport
    where: str = ""


@dataclass(frozen=True)
class Span:
    """Whole lines [start, end) of a JSON Lines file, the first numbered `first_line`.

    A worker reads its span itself: the text of the fleet never passes through a pipe."""

    path: Path
    start: int
    end: int
    first_line: int


# Bytes per span: some 250 report hosts, enough that a task's overhead is small beside it.
SPAN_BYTES = 4 << 20


def spans(path: Path, size: int | None = None) -> Iterator[Span]:
    """A JSON Lines file cut at line ends into spans of about `size` bytes, numbered by line.

    Reading to count newlines costs about a second per GB, a small part of judging them."""
    buffer = bytearray(size or SPAN_BYTES)
    start = offset = 0
    line = 1
    with path.open("rb", buffering=0) as handle:
        while True:
            read = handle.readinto(buffer)
            if not read:
                break
            cut = buffer.rfind(b"\n", 0, read)
            if cut >= 0:
                end = offset + cut + 1
                yield Span(path, start, end, line)
                line += buffer.count(b"\n", 0, cut + 1)
                start = end
            offset += read
    if start < offset:
        yield Span(path, start, offset, line)  # a last line without its newline


def span_entries(span: Span) -> Iterator[Entry]:
    with span.path.open("rb") as handle:
        handle.seek(span.start)
        text = handle.read(span.end - span.start)
    for number, line in enumerate(text.split(b"\n"), start=span.first_line):
        if line.strip():
            yield Entry(where=f"{span.path}:{number}", text=line)


_JUDGE: Judge | None = None


def _init_worker(judge: Judge) -> None:
    global _JUDGE
    _JUDGE = judge


# What judging sends back for a host: its line, its thin report as JSON, and where it was read.
_Wire = tuple[str, bytes, str] | BadLine | None


def _judge_work(work: Span | list[Entry]) -> list[_Wire]:
    """Judge a span or a chunk of entries (in a worker, or here with one core)."""
    assert _JUDGE is not None
    out: list[_Wire] = []
    with paused_gc():
        for entry in span_entries(work) if isinstance(work, Span) else work:
            host = host_of(entry)
            if host is None or isinstance(host, BadLine):
                out.append(host)
                continue
            report = _JUDGE(*host)
            line = jsonl.host(report) if _JUDGE.lines else ""
            out.append((line, thin_json(report, _JUDGE.evidence), entry.where))
    return out


def _chunks(
    entries: Iterable[Entry | BadLine | Span], size: int
) -> Iterator[list[Entry | BadLine] | Span]:
    chunk: list[Entry | BadLine] = []
    for entry in entries:
        if isinstance(entry, Span):
            if chunk:
                yield chunk
                chunk = []
            yield entry
            continue
        chunk.append(entry)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _task(
    chunk: list[Entry | BadLine] | Span,
) -> tuple[list[BadLine | None] | None, Span | list[Entry]]:
    """A chunk's bad lines in their places (None for a span: its worker finds its own), and
    the work to judge."""
    if isinstance(chunk, Span):
        return None, chunk
    bad: list[BadLine | None] = [e if isinstance(e, BadLine) else None for e in chunk]
    return bad, [e for e in chunk if isinstance(e, Entry)]


def judge_stream(
    entries: Iterable[Entry | BadLine | Span], judge: Judge, processes: int
) -> Generator[Judged | BadLine, None, None]:
    """Judged hosts in input order, from `processes` forked workers (1: in this process).

    `entries` may hold Spans of a JSON Lines file, which the workers read themselves."""
    if processes <= 1:
        _init_worker(judge)
        for chunk in _chunks(entries, CHUNK):
            bad, work = _task(chunk)
            yield from _ordered(bad, _judge_work(work))
        return
    context = get_context("fork")  # workers inherit the rules and candidate, nothing pickled
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_init_worker, initargs=(judge,)
    ) as pool:
        pending: deque[tuple[list[BadLine | None] | None, Future[list[_Wire]]]] = deque()
        for chunk in _chunks(entries, CHUNK):
            bad, work = _task(chunk)
            pending.append((bad, pool.submit(_judge_work, work)))
            # A few chunks in flight per worker: memory stays bounded, workers stay busy.
            while len(pending) > 2 * processes:
                bad, future = pending.popleft()
                yield from _ordered(bad, future.result())
        while pending:
            bad, future = pending.popleft()
            yield from _ordered(bad, future.result())


def _unwire(result: _Wire) -> Judged | BadLine | None:
    if isinstance(result, tuple):
        line, report, where = result
        return Judged(line, HostReport.model_validate_json(report), where)
    return result


def _ordered(bad: list[BadLine | None] | None, judged: list[_Wire]) -> Iterator[Judged | BadLine]:
    results = map(_unwire, judged)
    if bad is None:
        yield from (r for r in results if r is not None)
        return
    for slot in bad:
        outcome = slot if slot is not None else next(results)
        if outcome is not None:
            yield outcome
