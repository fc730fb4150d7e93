"""Real-world captures: wrapped and translated lscpu, non-x86 cpuinfo, kvm_amd.npt booleans.

Captures live in tests/data/captures, each with its SOURCE line (stripped before use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.derive import kstrtobool
from scanner.evaluate import evaluate_host
from scanner.ingest import from_probe
from scanner.probe import probe_host
from scanner.probe.cpu import parse_lscpu_text, summarize_lscpu
from scanner.resources import rules_dir
from scanner.rules import load_rules
from tests.trees import DATA, Tree

CAPTURES = DATA / "captures"


def capture(name: str) -> str:
    lines = (CAPTURES / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("SOURCE:"))


def probe_items(root: Path) -> dict[str, Any]:
    return probe_host(str(root))["items"]


def verdicts(root: Path) -> dict[str, tuple[str, str]]:
    facts = from_probe(probe_host(str(root)))
    report = evaluate_host(load_rules(rules_dir()), root.name, facts)
    return {f.rule_id: (f.verdict.value, f.reason) for f in report.findings}


# --- lscpu: wrapped Flags -----------------------------------------------------------------


def wrap_like_lscpu(key: str, value: str, column: int, width: int) -> str:
    """What lscpu's tree output (libsmartcols, SCOLS_FL_WRAP) prints: the value cut every
    `width` columns wherever that falls, continuation lines indented to the value column."""
    chunks = [value[i : i + width] for i in range(0, len(value), width)] or [""]
    head = f"    {key}:".ljust(column) + chunks[0]
    return "\n".join([head, *[" " * column + chunk for chunk in chunks[1:]]]) + "\n"


FLAG = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=24)


@settings(max_examples=300, deadline=None)
@given(flags=st.lists(FLAG, min_size=1, max_size=80), width=st.integers(1, 120))
def test_wrapped_flags_parse_like_unwrapped(flags: list[str], width: int) -> None:
    value = " ".join(flags)
    wrapped = "Vendor ID:               AuthenticAMD\n" + wrap_like_lscpu("Flags", value, 25, width)
    assert summarize_lscpu(parse_lscpu_text(wrapped))["flags"] == flags


@settings(max_examples=300, deadline=None)
@given(flags=st.lists(FLAG, min_size=2, max_size=80), width=st.integers(2, 120))
def test_wrapped_flags_with_trailing_spaces_stripped(flags: list[str], width: int) -> None:
    """Editors, pastes and Markdown strip the space a break left at a line's end: it comes back
    from the column width, which every other wrapped value of the capture shows (here the
    Vulnerabilities line of the same width)."""
    value = " ".join(flags)
    text = wrap_like_lscpu("Flags", value, 25, width)
    text += wrap_like_lscpu("Spectre v2", "x" * (2 * width + 1), 25, width)
    stripped = "".join(line.rstrip() + "\n" for line in text.splitlines())
    assert summarize_lscpu(parse_lscpu_text(stripped))["flags"] == flags


def test_wrapped_rhel9_style_capture(tmp_path: Path) -> None:
    found = probe_items(Tree(lscpu=capture("lscpu-wrapped-xen-tree.txt")).build(tmp_path))
    value = found["lscpu"]["value"]
    assert value["vendor_id"] == "GenuineIntel" and value["model"] == 79
    # Wrapped mid-word ("rd"/"tscp", "tsc_kn"/"own_freq", "fsgsbas"/"e") and between words.
    assert {"rdtscp", "tsc_known_freq", "fsgsbase", "mca", "cmov", "x2apic", "rdrand"} <= set(
        value["flags"]
    )
    assert not {"rd", "e", "mcacmov", "sse4_2x2apic", "f16crdrand"} & set(value["flags"])


def test_stripped_trailing_space_does_not_glue_flags(tmp_path: Path) -> None:
    """The zh_CN capture lost its trailing spaces: `xtopology` + `nonstop_tsc` must not glue."""
    text = capture("lscpu-zh_CN-stripped.txt")
    value = probe_items(Tree(lscpu=text).build(tmp_path))["lscpu"]["value"]
    flags = set(value["flags"])
    assert {"xtopology", "nonstop_tsc", "3dnowprefetch", "dtherm", "tpr_shadow", "vnmi"} <= flags
    assert "xtopologynonstop_tsc" not in flags and "pdcmpcid" not in flags


def test_same_capture_with_and_without_trailing_spaces() -> None:
    text = capture("lscpu-wrapped-xen-tree.txt")
    stripped = "".join(line.rstrip() + "\n" for line in text.splitlines())
    assert summarize_lscpu(parse_lscpu_text(stripped)) == summarize_lscpu(parse_lscpu_text(text))


# --- lscpu: other languages -----------------------------------------------------------------


def test_chinese_lscpu_is_understood(tmp_path: Path) -> None:
    value = probe_items(Tree(lscpu=capture("lscpu-zh_CN-stripped.txt")).build(tmp_path))["lscpu"]
    assert value["status"] == "ok"
    got = value["value"]
    assert (got["architecture"], got["vendor_id"]) == ("x86_64", "GenuineIntel")
    assert (got["cpu_family"], got["model"], got["stepping"]) == (6, 142, 10)
    assert got["model_name"] == "Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz"
    assert got["virtual_address_bits"] == 48


# Keys as util-linux's po/<lang>.po translates them (msgstrs at 80d80ae5191f), one AMD host.
TRANSLATED = {
    "de": ("Architektur", "Anbieterkennung", "Modellname", "Prozessorfamilie", "Modell",
           "Stepping", "Adressgrößen", "Markierungen", ":"),
    "fr": ("Architecture", "Identifiant constructeur", "Nom de modèle",
           "Famille de processeur", "Modèle", "Révision", "Tailles des adresses", "Drapeaux",
           "\u00a0:"),
    "es": ("Arquitectura", "ID de fabricante", "Nombre del modelo", "Familia de CPU", "Modelo",
           "Revisión", "Tamaños de las direcciones", "Indicadores", ":"),
    "ja": ("アーキテクチャ", "ベンダー ID", "モデル名", "CPU ファミリー", "モデル", "ステッピング",
           "アドレスサイズ", "フラグ", ":"),
    "ru": ("Архитектура", "ID прроизводителя", "Имя модели", "Семейство ЦПУ", "Модель",
           "Степпинг", "Address sizes", "Флаги", ":"),
    "pt_BR": ("Arquitetura", "ID de fornecedor", "Nome do modelo", "Família da CPU", "Modelo",
              "Step", "Tamanhos de endereço", "Opções", ":"),
}  # fmt: skip


@pytest.mark.parametrize("lang", sorted(TRANSLATED))
def test_translated_lscpu_is_understood(lang: str) -> None:
    arch, vendor, name, family, model, stepping, sizes, flags, colon = TRANSLATED[lang]
    rows = [
        (arch, "x86_64"),
        (vendor, "AuthenticAMD"),
        (name, "AMD EPYC 9654 96-Core Processor"),
        (family, "25"),
        (model, "17"),
        (stepping, "1"),
        (sizes, "52 bits physical, 57 bits virtual"),
        (flags, "fpu svm npt la57"),
    ]
    text = "".join(f"{key}{colon}".ljust(32) + value + "\n" for key, value in rows)
    got = summarize_lscpu(parse_lscpu_text(text))
    assert got == {
        "architecture": "x86_64",
        "vendor_id": "AuthenticAMD",
        "model_name": "AMD EPYC 9654 96-Core Processor",
        "cpu_family": 25,
        "model": 17,
        "stepping": 1,
        "physical_address_bits": 52,
        "virtual_address_bits": 57,
        "flags": ["fpu", "svm", "npt", "la57"],
    }


def test_untranslated_language_is_unparsable_with_reason(tmp_path: Path) -> None:
    """Polish (util-linux po/pl.po) keeps "Model:" in English: that alone is never `ok`."""
    text = (
        "Architektura:            x86_64\n"
        "ID producenta:           AuthenticAMD\n"
        "Rodzina CPU:             25\n"
        "Model:                   17\n"
        "Wersja:                  1\n"
        "Flagi:                   fpu svm la57\n"
    )
    item = probe_items(Tree(lscpu=text).build(tmp_path))["lscpu"]
    assert item["status"] == "unparsable"
    assert "Architektura" in item["reason"] and "LC_ALL=C" in item["reason"]


# --- non-x86 cpuinfo ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arch", "processors"),
    [
        ("arm64-cpuinfo-kata.txt", "aarch64", 2),
        ("power8-cpuinfo-kata.txt", "ppc64", 20),
        ("s390x-cpuinfo-kata.txt", "s390x", 4),
    ],
)
def test_non_x86_cpuinfo_is_not_applicable(
    tmp_path: Path, name: str, arch: str, processors: int
) -> None:
    root = Tree(cpuinfo=capture(name), loaded=["kvm"], sys_modules={"kvm": {}}).build(
        tmp_path / "host"
    )
    item = probe_items(root)["cpuinfo"]
    assert item["status"] == "ok"
    assert item["value"]["architecture"] == arch
    assert item["value"]["processors"] == processors
    found = verdicts(root)
    verdict, reason = found["kvm-amd-la57-npt"]
    assert verdict == "not_applicable" and f"cpu.arch={arch}" in reason
    assert all(v == "not_applicable" for v, _ in found.values()), found


# --- kvm_amd.npt= on the command line -------------------------------------------------------

TRUE_WORDS = ["1", "y", "Y", "on", "ON", "On", "true", "True", "TRUE", "yes"]
FALSE_WORDS = ["0", "n", "N", "off", "OFF", "Off", "false", "False", "FALSE", "no"]


@pytest.mark.parametrize("word", TRUE_WORDS + FALSE_WORDS + ["", "o", "maybe", "2"])
def test_kstrtobool(word: str) -> None:
    expected = True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    assert kstrtobool(word) is expected


@pytest.mark.parametrize(("word", "npt"), [("off", False), ("false", False), ("On", True)])
def test_cmdline_npt_words(tmp_path: Path, word: str, npt: bool) -> None:
    root = Tree(
        cpuinfo=(DATA / "samples" / "bergamo-cpuinfo-2-guest.txt").read_text(),
        cmdline=f"BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro kvm_amd.npt={word}",
        loaded=["ccp"],
        sys_modules={},
    ).build(tmp_path)
    facts = from_probe(probe_host(str(root)))
    assert facts.kvm.cmdline_npt == word
    assert facts.kvm.npt_enabled is npt


# --- capture layouts: sosreport, insights-client, syslog ------------------------------------


def journal_capture() -> str:
    return capture("journal-cr4-rocm-6033.txt")


def until_next_boot(text: str) -> str:
    """The same journal as `journalctl --boot` of the boot that logged the dump shows it."""
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "kernel: Linux version" in line)
    return "".join(lines[:cut])


def cr4_facts(root: Path) -> tuple[int | None, str | None, str | None]:
    facts = from_probe(probe_host(str(root)))
    where = facts.provenance.get("cpu.cr4")
    return facts.cpu.cr4, where.source if where else None, where.reason if where else None


SOS_JOURNAL = "/sos_commands/logs/journalctl_--no-pager_--catalog_--boot"


def test_sosreport_journal_of_this_boot_gives_cr4_with_its_time(tmp_path: Path) -> None:
    tree = Tree(extra_files={SOS_JOURNAL: until_next_boot(journal_capture())})
    cr4, source, _ = cr4_facts(tree.build(tmp_path))
    assert cr4 == 0xF50EF0
    assert source == f"{SOS_JOURNAL}, register dump at Mar 12 00:28:40"


def test_a_dump_from_an_earlier_boot_is_not_this_boots_cr4(tmp_path: Path) -> None:
    """An unbounded journal (or /var/log/messages) spans boots: a dump before the last
    "Linux version" line describes another kernel."""
    for place in ("/sos_commands/logs/journalctl_--no-pager", "/var/log/messages"):
        root = Tree(extra_files={place: journal_capture()}).build(tmp_path / place.strip("/"))
        cr4, _, reason = cr4_facts(root)
        assert cr4 is None
        assert reason is not None and place in reason and "no register dump" in reason


def test_previous_boot_journal_is_ignored(tmp_path: Path) -> None:
    text = until_next_boot(journal_capture())
    root = Tree(extra_files={f"{SOS_JOURNAL}_-1": text}).build(tmp_path)
    item = probe_items(root)["kernel_log"]
    assert item["status"] == "missing"


def test_old_sosreport_dmesg_place_and_later_capture_that_kept_the_dump(tmp_path: Path) -> None:
    """sos_commands/general/dmesg (older sosreports) is read; a ring buffer that lost the dump
    does not hide the one the journal kept, and the source says which file held it."""
    wrapped = "[77150.000001] perf: interrupt took too long\n"
    root = Tree(
        extra_files={
            "/sos_commands/general/dmesg": wrapped,
            SOS_JOURNAL: until_next_boot(journal_capture()),
        }
    ).build(tmp_path)
    item = probe_items(root)["kernel_log"]
    assert item["source"] == "/sos_commands/general/dmesg"
    cr4, source, _ = cr4_facts(root)
    assert cr4 == 0xF50EF0 and source is not None and source.startswith(SOS_JOURNAL)


def as_dmesg_t(journal: str) -> str:
    """The dump as `dmesg -T` prints it: the wall clock in brackets, no host or tag."""
    out = []
    for line in journal.splitlines():
        stamp, _, text = line.partition(" thinkpaddy kernel: ")
        out.append(f"[Thu {stamp} 2026] {text}")
    return "\n".join(out) + "\n"


def as_coloured_dmesg(journal: str) -> str:
    """`dmesg --color=always`: the monotonic time green, the facility and message coloured."""
    out = []
    for index, line in enumerate(journal.splitlines()):
        text = line.partition(" thinkpaddy kernel: ")[2]
        out.append(f"\x1b[32m[{1000 + index:5d}.000123]\x1b[0m \x1b[33m{text}\x1b[0m")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    ("place", "convert", "when"),
    [
        ("/sos_commands/kernel/dmesg_-T", as_dmesg_t, "Thu Mar 12 00:28:40 2026"),
        ("/var/log/dmesg", as_coloured_dmesg, "1018.000123 s"),
    ],
)
def test_timestamps_of_other_dmesg_formats(
    tmp_path: Path, place: str, convert: Any, when: str
) -> None:
    text = convert(until_next_boot(journal_capture()))
    cr4, source, _ = cr4_facts(Tree(extra_files={place: text}).build(tmp_path))
    assert cr4 == 0xF50EF0
    assert source == f"{place}, register dump at {when}"


INSIGHTS = CAPTURES / "insights-archive"


@pytest.mark.parametrize("prefix", ["", "data/"])
def test_insights_client_archive_layout(tmp_path: Path, prefix: str) -> None:
    import shutil

    from scanner.inputs import hosts_from_roots

    archive = tmp_path / "insights-rhel7box-20151007031606"
    shutil.copytree(INSIGHTS / "insights_commands", archive / prefix / "insights_commands")
    host = hosts_from_roots([str(archive)])["insights-rhel7box-20151007031606"]
    assert not isinstance(host, Exception) and hasattr(host, "kernel")
    assert host.kernel.release == "3.10.0-229.el7.x86_64"
    assert host.provenance["kernel.release"].source == "/insights_commands/uname_-a"
    assert host.cpu.vendor == "GenuineIntel" and host.cpu.model == 60
    assert host.provenance["cpu.vendor"].source == "/insights_commands/lscpu"
    assert host.cpu.flags is not None
    assert {"tpr_shadow", "vnmi", "constant_tsc"} <= set(host.cpu.flags)
    assert "tpr_shadowvnmi" not in host.cpu.flags
    reason = host.provenance["cpu.cr4"].reason or ""
    assert reason.startswith("/insights_commands/dmesg: no register dump")


def test_uname_a_is_a_release_source_only_when_proc_has_none(tmp_path: Path) -> None:
    uname = (INSIGHTS / "insights_commands" / "uname_-a").read_text()
    root = Tree(release=None, extra_files={"/sos_commands/kernel/uname_-a": uname}).build(
        tmp_path / "a"
    )
    release = probe_items(root)["release"]
    assert (release["source"], release["value"]) == (
        "/sos_commands/kernel/uname_-a",
        "3.10.0-229.el7.x86_64",
    )
    both = Tree(extra_files={"/sos_commands/kernel/uname_-a": uname}).build(tmp_path / "b")
    assert probe_items(both)["release"]["source"] == "/proc/sys/kernel/osrelease"


# --- whatever a capture holds, the readers answer (never raise) ----------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=600))
def test_lscpu_and_cpuinfo_readers_never_raise(text: str) -> None:
    from scanner.probe.cpu import lscpu_item, parse_cpuinfo

    fields = parse_lscpu_text(text)
    item = lscpu_item("/sos_commands/processor/lscpu", fields)
    assert item["status"] in ("ok", "unparsable")
    if item["status"] == "ok":
        assert item["value"]
    value = parse_cpuinfo(text)
    assert value["processors"] >= 0


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400), extra=st.sampled_from(["", "\x1b[31m", "Linux version 6"]))
def test_kernel_log_scan_never_raises(text: str, extra: str) -> None:
    from scanner.probe.kernellog import _dmesg_lines, _scan

    found = _scan(_dmesg_lines(extra + text))
    assert found["lines"] >= 0
