"""What the machine's CPU can do, for the precision settings (``train.mixed_precision``,
``decode.dtype``)."""

from __future__ import annotations

import re
from pathlib import Path


def cpu_has_native_bfloat16() -> bool | None:
    """Whether the CPU has bfloat16 instructions (x86: AVX512_BF16 or AMX; Arm: BF16);
    None if unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return bool(re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", flags))
