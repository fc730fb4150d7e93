"""CPU generation names (Rome, Milan, Genoa, ...) from vendor, family and model.

People plan upgrades by generation, not by "family 0x19 model 0x11", so the HTML report groups
hosts this way. Sources:
- AMD Zen generations by family/model range: Linux arch/x86/kernel/cpu/amd.c, bsp_init_amd()
  ("Figure out Zen generations", X86_FEATURE_ZEN1..ZEN5; 3e4147f33f8b added Zen 5).
- AMD server parts within those ranges: Naples 17h/01h, Rome 17h/31h, Milan 19h/01h, Genoa
  19h/11h, Bergamo and Siena 19h/A0h, Turin 1Ah/02h, Turin Dense 1Ah/11h (AMD's Processor
  Programming References, one per family and model range); ../shared/KERNEL-FACTS.md (Zen 4 is
  19h models 10h-1Fh and 60h-AFh, Zen 5 is 1Ah) and the captures in tests/data/samples.
- Intel server models: Linux arch/x86/include/asm/intel-family.h (INTEL_SKYLAKE_X 0x55,
  INTEL_ICELAKE_X 0x6A, INTEL_ICELAKE_D 0x6C, INTEL_SAPPHIRERAPIDS_X 0x8F,
  INTEL_EMERALDRAPIDS_X 0xCF, INTEL_GRANITERAPIDS_X 0xAD, INTEL_GRANITERAPIDS_D 0xAE,
  INTEL_ATOM_CRESTMONT_X 0xAF Sierra Forest, INTEL_ATOM_DARKMONT_X 0xDD Clearwater Forest).
"""

from __future__ import annotations

# (family, first model, last model, name), AMD's server lines first: they are what runs KVM.
_AMD: tuple[tuple[int, int, int, str], ...] = (
    (0x17, 0x00, 0x0F, "Naples (Zen)"),
    (0x17, 0x30, 0x3F, "Rome (Zen 2)"),
    (0x19, 0x00, 0x0F, "Milan (Zen 3)"),
    (0x19, 0x10, 0x1F, "Genoa (Zen 4)"),
    (0x19, 0xA0, 0xAF, "Bergamo/Siena (Zen 4c)"),
    (0x1A, 0x00, 0x0F, "Turin (Zen 5)"),
    (0x1A, 0x10, 0x1F, "Turin Dense (Zen 5c)"),
    # The remaining Zen ranges of bsp_init_amd(): client parts (Ryzen, Threadripper, mobile).
    (0x17, 0x10, 0x2F, "Zen client"),
    (0x17, 0x50, 0x5F, "Zen client"),
    (0x17, 0x40, 0x4F, "Zen 2 client"),
    (0x17, 0x60, 0x7F, "Zen 2 client"),
    (0x17, 0x90, 0x91, "Zen 2 client"),
    (0x17, 0xA0, 0xAF, "Zen 2 client"),
    (0x19, 0x20, 0x5F, "Zen 3 client"),
    (0x19, 0x60, 0x9F, "Zen 4 client"),
    (0x1A, 0x20, 0x2F, "Zen 5 client"),
    (0x1A, 0x40, 0x4F, "Zen 5 client"),
    (0x1A, 0x60, 0x7F, "Zen 5 client"),
)

_INTEL: dict[int, str] = {
    0x3F: "Haswell-X",
    0x4F: "Broadwell-X",
    0x55: "Skylake/Cascade Lake-SP",
    0x6A: "Ice Lake-SP",
    0x6C: "Ice Lake-D",
    0x8F: "Sapphire Rapids",
    0xCF: "Emerald Rapids",
    0xAD: "Granite Rapids",
    0xAE: "Granite Rapids-D",
    0xAF: "Sierra Forest",
    0xDD: "Clearwater Forest",
}

UNKNOWN = "unknown CPU"


def generation(vendor: str | None, family: int | None, model: int | None) -> str:
    """A short, human name for the CPU's generation; never empty, never raises."""
    if vendor == "AuthenticAMD":
        if family is None or model is None:
            return "AMD (family/model unknown)"
        for fam, first, last, name in _AMD:
            if family == fam and first <= model <= last:
                return name
        return f"AMD family {family:#x} model {model:#x}"
    if vendor == "HygonGenuine":
        return "Hygon Dhyana" if family == 0x18 else "Hygon"
    if vendor == "GenuineIntel":
        if family == 6 and model in _INTEL:
            return f"Intel {_INTEL[model]}"
        if family is None or model is None:
            return "Intel"
        return f"Intel family {family} model {model:#x}"
    if vendor:
        return vendor
    return UNKNOWN
