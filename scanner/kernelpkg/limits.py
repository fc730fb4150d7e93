"""Caps on what one package may make the reader do (tests lower them through this module)."""

MiB = 1024 * 1024
MAX_MEMBER_BYTES = 512 * MiB  # one extracted file
MAX_TOTAL_BYTES = 1024 * MiB  # everything extracted from one package
MAX_SCANNED_BYTES = 8192 * MiB  # archive content read through (a decompression bomb stops here)
MAX_MEMBERS = 1_000_000
MAX_TAR_HEADER_BYTES = 1 * MiB  # one pax or GNU long-name header
MAX_CONTROL_BYTES = 4 * MiB
MAX_RPM_HEADER_BYTES = 64 * MiB
MAX_DECODER_MEMORY = 256 * MiB  # xz/lzma decoder memory limit
CHUNK = 256 * 1024  # one read
