"""CPU identity and address widths from /proc/cpuinfo and lscpu."""

import json
import os
import re
import subprocess
import unicodedata
from typing import Any, Dict, List, Optional

from . import items
from .items import Item, Root

_ADDRESS_SIZES = re.compile(r"(\d+)\s*bits physical,\s*(\d+)\s*bits virtual")
_CPUINFO_INTS = {"cpu family": "cpu_family", "model": "model", "stepping": "stepping"}
_CPUINFO_TEXT = {"vendor_id": "vendor_id", "model name": "model_name"}
LSCPU_CAPTURES = (
    "/sos_commands/processor/lscpu",
    "/sos_commands/processor/lscpu_-J",
    "/insights_commands/lscpu",
)


def _to_int(text: str) -> Optional[int]:
    text = text.strip()
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        return int(text, 16) if text.lower().startswith("0x") else None
    except ValueError:
        return None


def parse_address_sizes(text: str) -> Optional[Dict[str, int]]:
    match = _ADDRESS_SIZES.search(text)
    if not match:
        return None
    return {
        "physical_address_bits": int(match.group(1)),
        "virtual_address_bits": int(match.group(2)),
    }


def _non_x86_arch(fields: Dict[str, str]) -> Optional[str]:
    """The architecture of a cpuinfo that is not x86's, named from the keys only it prints.

    arch/arm64/kernel/cpuinfo.c ("CPU implementer", "CPU architecture: 8"), arch/arm/kernel/setup.c
    (the same keys, architecture 7 and older), arch/powerpc/kernel/setup-common.c ("cpu : POWER9",
    "timebase", "platform"), arch/s390/kernel/processor.c ("vendor_id : IBM/S390").
    """
    vendor = fields.get("vendor_id", "")
    if vendor.startswith("IBM/S390"):
        return "s390x"
    if "CPU implementer" in fields or "CPU architecture" in fields:
        level = _to_int(fields.get("CPU architecture", "").split("(")[0]) or 0
        return "aarch64" if level >= 8 or "asimd" in fields.get("Features", "").split() else "arm"
    if "timebase" in fields or fields.get("cpu", "").upper().startswith(("POWER", "PPC")):
        return "ppc64"
    return None


def parse_cpuinfo(text: str) -> Dict[str, Any]:
    """The first processor's identity, flags and address sizes, plus the processor count.

    A file that does not end in a newline was cut short: its last line is dropped, so a
    half-written flags line can't hide `la57`. On ARM, POWER and s390x the keys differ:
    `architecture` then names the machine so rules can say why they do not apply.
    """
    lines = text.split("\n")
    truncated = not text.endswith("\n")
    if truncated:
        lines = lines[:-1]
    value: Dict[str, Any] = {"processors": 0}
    first: Dict[str, str] = {}
    for line in lines:
        key, sep, raw = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        raw = raw.strip()
        if key == "processor" or re.match(r"^processor \d+$", key):
            value["processors"] += 1
            continue
        if key == "# processors":
            number = _to_int(raw)
            if number is not None:
                value["processors_declared"] = number
            continue
        if value["processors"] > 1:
            continue
        first.setdefault(key, raw)
        if key in _CPUINFO_TEXT:
            value.setdefault(_CPUINFO_TEXT[key], raw)
        elif key in _CPUINFO_INTS:
            number = _to_int(raw)
            if number is not None:
                value.setdefault(_CPUINFO_INTS[key], number)
        elif key == "flags":
            value.setdefault("flags", raw.split())
        elif key == "address sizes":
            sizes = parse_address_sizes(raw)
            if sizes:
                for name, bits in sizes.items():
                    value.setdefault(name, bits)
    arch = _non_x86_arch(first)
    if arch is not None:
        value["architecture"] = arch
        # Only x86 has these meanings: POWER's "model" is the machine, not a CPU model.
        for name in ("cpu_family", "model", "stepping", "flags"):
            value.pop(name, None)
        if arch == "s390x" and "processors_declared" in value:
            value["processors"] = max(value["processors"], value["processors_declared"])
        if "cpu" in first and "model_name" not in value:
            value["model_name"] = first["cpu"]
    value.pop("processors_declared", None)
    if truncated:
        value["truncated"] = True
    return value


def read_cpuinfo(root: Root) -> Item:
    source = "/proc/cpuinfo"
    text, failure = items.read_text_item(root, source)
    if failure:
        return failure
    assert text is not None
    value = parse_cpuinfo(text)
    if "vendor_id" not in value and "flags" not in value and "architecture" not in value:
        return items.failed(
            source,
            items.UNPARSABLE,
            "%s: unparsable (no vendor_id or flags line, and no other architecture's keys)"
            % source,
        )
    return items.ok(source, value)


# lscpu's keys in the languages util-linux ships translations for (a capture made without
# LC_ALL=C), each msgstr taken from util-linux's po/<lang>.po, every version of it in git
# (github.com/util-linux/util-linux, po/*.po up to 80d80ae5191f5e433f1b664a64af61573c28f46e and,
# for zh_CN, ebb7438a48802b21a234903da75b53092bc3c5b1). Untranslated msgids (zh_CN and ru have
# no "Address sizes:") print in English, which the English keys already cover.
LSCPU_KEYS = {
    "Architecture": (
        "Architecture",  # en, fr
        "Architektur",  # de
        "Arquitectura",  # es
        "アーキテクチャ",  # ja
        "架构",  # zh_CN
        "Архитектура",  # ru
        "Arquitetura",  # pt_BR
    ),
    "Vendor ID": (
        "Vendor ID",
        "Anbieterkennung",
        "Identifiant constructeur",
        "identifiant constructeur",
        "ID du vendeur",
        "ID de fabricante",
        "ベンダー ID",
        "ベンダーID",
        "厂商 ID",
        "ID прроизводителя",  # sic, as util-linux's ru.po spells it
        "ID de fornecedor",
    ),
    "Model name": (
        "Model name",
        "Modellname",
        "Nom de modèle",
        "Nombre del modelo",
        "モデル名",
        "型号名称",
        "Имя модели",
        "Nome do modelo",
    ),
    "CPU family": (
        "CPU family",
        "Prozessorfamilie",
        "Famille de processeur",
        "Famille de microprocesseur",
        "Famille CPU",
        "Familia de CPU",
        "CPU ファミリー",
        "CPUファミリー",
        "CPU 系列",
        "Семейство ЦПУ",
        "Família da CPU",
    ),
    "Model": ("Model", "Modell", "Modèle", "Modelo", "モデル", "型号", "Модель"),
    "Stepping": (
        "Stepping",
        "Révision",
        "Version",
        "Revisión",
        "ステッピング",
        "步进",
        "Степпинг",
        "Step",
    ),
    "Flags": (
        "Flags",
        "Markierungen",
        "Drapeaux",
        "Drapaux",
        "Indicadores",
        "フラグ",
        "标记",
        "Флаги",
        "Opções",
    ),
    "Address sizes": (
        "Address sizes",
        "Adressgrößen",
        "Tailles des adresses",
        "Tamaños de las direcciones",
        "アドレスサイズ",
        "Tamanhos de endereço",
    ),
}
_CANONICAL = dict((alias, key) for key, aliases in LSCPU_KEYS.items() for alias in aliases)
# A key, then ':' (or the full-width U+FF1A of the zh_CN translation); French puts a
# no-break space before the colon.
_LSCPU_LINE = re.compile(r"^(\s*)([^\W\d_][^:\uff1a]{0,39}?)\s*[:\uff1a](\s*)(.*)$")


def canonical_key(field: str) -> str:
    """lscpu's English key for `field` in any language util-linux translates it to."""
    key = field.strip().rstrip(":\uff1a").strip()
    return _CANONICAL.get(key, key)


def _width(text: str) -> int:
    """Display columns: CJK characters take two, as libsmartcols aligns them."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def _lscpu_fields(entries: List[Any], out: Dict[str, str]) -> None:
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        field = canonical_key(str(entry.get("field", "")))
        data = entry.get("data")
        if field and isinstance(data, str):
            out.setdefault(field, data)
        children = entry.get("children")
        if isinstance(children, list):
            _lscpu_fields(children, out)


def parse_lscpu_json(text: str) -> Dict[str, str]:
    document = json.loads(text)
    out: Dict[str, str] = {}
    _lscpu_fields(document.get("lscpu", []) if isinstance(document, dict) else [], out)
    return out


def _join_chunks(chunks: List[str], width: int) -> str:
    """A wrapped value rejoined. lscpu (libsmartcols) cuts at exactly `width` columns, mid-word
    or not, so a chunk is never shorter than the column unless it is the last, or its trailing
    space (the one between two flags) was stripped on the way (an editor, a paste, a report):
    then the space comes back, so `tpr_shadow ` + `vnmi` never reads as `tpr_shadowvnmi`.
    """
    out = []
    for index, chunk in enumerate(chunks):
        out.append(chunk)
        last = index == len(chunks) - 1
        if not last and len(chunk) < width and not chunk.endswith(" "):
            out.append(" ")
    return "".join(out)


def parse_lscpu_text(text: str) -> Dict[str, str]:
    """`Key: value` lines, keys in English or a translation; wrapped values rejoined."""
    values: Dict[str, List[str]] = {}
    order: List[str] = []
    last_key: Optional[str] = None
    value_column = 0
    for line in text.splitlines():
        line = line.rstrip("\r")
        # A continuation: blank up to the value column (spaces, so characters are columns);
        # a chunk can itself be one space, when the column is that narrow.
        if (
            last_key
            and value_column
            and len(line) > value_column
            and not line[:value_column].strip()
        ):
            values[last_key].append(line[value_column:])
            continue
        match = _LSCPU_LINE.match(line)
        if match:
            key = canonical_key(match.group(2))
            value = match.group(4)
            value_column = _width(line[: len(line) - len(value)])
            last_key = key if key not in values else None
            if last_key is not None:
                values[key] = [value]
                order.append(key)
            continue
        last_key = None
    # Every wrapped value shares the column's width: the widest chunk before a line break.
    width = max([len(c) for v in values.values() for c in v[:-1]] or [0])
    return dict((key, _join_chunks(values[key], width).rstrip()) for key in order)


def summarize_lscpu(fields: Dict[str, str]) -> Dict[str, Any]:
    fields = dict((canonical_key(k), v) for k, v in fields.items())
    value: Dict[str, Any] = {}
    if "Architecture" in fields:
        value["architecture"] = fields["Architecture"].strip()
    if "Vendor ID" in fields:
        value["vendor_id"] = fields["Vendor ID"].strip()
    if "Model name" in fields:
        value["model_name"] = fields["Model name"].strip()
    for key, name in (("CPU family", "cpu_family"), ("Model", "model"), ("Stepping", "stepping")):
        number = _to_int(fields.get(key, ""))
        if number is not None:
            value[name] = number
    if "Address sizes" in fields:
        sizes = parse_address_sizes(fields["Address sizes"])
        if sizes:
            value.update(sizes)
    if "Flags" in fields:
        value["flags"] = fields["Flags"].split()
    return value


_DECIDING = ("architecture", "vendor_id", "model_name", "flags", "virtual_address_bits")


def lscpu_item(source: str, fields: Dict[str, str]) -> Item:
    """ok with what lscpu said, or unparsable saying which keys were not understood: a
    capture in a language fleetscan can't read is never `ok` holding only a stepping."""
    summary = summarize_lscpu(fields)
    if any(name in summary for name in _DECIDING):
        return items.ok(source, summary)
    strange = [k for k in fields if canonical_key(k) not in LSCPU_KEYS][:6]
    if strange:
        return items.failed(
            source,
            items.UNPARSABLE,
            "%s: lscpu keys not understood (%s): a language other than %s? capture with LC_ALL=C"
            % (source, ", ".join(strange), ", ".join(LANGUAGES)),
        )
    return items.failed(source, items.UNPARSABLE, "%s: no lscpu fields" % source)


LANGUAGES = ("en", "de", "fr", "es", "ja", "zh_CN", "ru", "pt_BR")


def read_lscpu(root: Root) -> Item:
    if root.live:
        command = "lscpu -J"
        try:
            env = dict(os.environ, LC_ALL="C")
            proc = subprocess.Popen(
                ["lscpu", "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return items.failed(command, items.ERROR, "lscpu -J: timed out after 10 s")
        except EnvironmentError as exc:
            return items.from_os_error("lscpu", exc)
        if proc.returncode != 0:
            reason = err.decode("utf-8", "replace").strip().splitlines()
            return items.failed(
                command,
                items.ERROR,
                "lscpu -J: exit %d%s" % (proc.returncode, (": " + reason[0]) if reason else ""),
            )
        try:
            fields = parse_lscpu_json(out.decode("utf-8", "replace"))
        except ValueError as exc:
            return items.failed(command, items.UNPARSABLE, "lscpu -J: not JSON (%s)" % exc)
        return lscpu_item(command, fields)
    capture, text, failure = items.first_capture(root, LSCPU_CAPTURES, "lscpu")
    if failure is not None:
        return failure
    assert capture is not None and text is not None
    if text.lstrip().startswith("{"):
        try:
            fields = parse_lscpu_json(text)
        except ValueError as exc:
            return items.failed(capture, items.UNPARSABLE, "%s: not JSON (%s)" % (capture, exc))
    else:
        fields = parse_lscpu_text(text)
    return lscpu_item(capture, fields)


def read_machine(root: Root) -> Item:
    """The machine architecture: uname on the live host; trees rely on lscpu/cpuinfo."""
    if not root.live:
        return items.failed("uname -m", items.NOT_APPLICABLE, "uname -m: not a live host")
    return items.ok("uname -m", os.uname()[4])
