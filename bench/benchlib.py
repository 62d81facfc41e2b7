"""What the benchmark scripts share: the machine record every figure is published with, and the results file."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

# CPU features that decide which precision is fast here (bf16 needs AVX-512 BF16 or AMX to beat fp32).
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """CPU model, count and the precision-relevant flags, read from /proc/cpuinfo (empty where it does not exist)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"cpu": model, "cpu_count": os.cpu_count(), "flags": [flag for flag in PRECISION_FLAGS if flag in flags],
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def finish(out: Path | None, environment: dict, rows: list[dict], table: str, headline: str) -> int:
    """Print the headline and the table, write ``{"environment", "results"}`` to ``out``; 1 if any row failed."""
    print(headline)
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"environment": environment, "results": rows}, indent=2) + "\n")
    return 1 if any("error" in row for row in rows) else 0


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
