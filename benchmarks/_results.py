"""Shared helpers for benchmark scripts: machine description and RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    cpu = cpu_model()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text(encoding="utf-8").split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, no GPU" if not _has_cuda() else f"{os.cpu_count()} cores, CUDA GPU"


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def update_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, leaving others untouched.

    ``### `` subsections of the old section whose heading ``body`` does not render (notes
    written by hand under a generated table) are kept after the new body."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    kept = []
    if found:
        rendered = set(re.findall(r"^### .*$", body, re.M))
        for sub in re.findall(r"^### .*?(?=^### |\Z)", found.group(0), re.S | re.M):
            if sub.splitlines()[0] not in rendered:
                kept.append(sub.strip())
    section = "\n\n".join([f"## {title}", body.strip(), *kept]) + "\n\n"
    text = pattern.sub(lambda _: section, text) if found else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")
