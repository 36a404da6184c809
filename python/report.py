"""Shared by the benchmark/evaluation drivers: print a finished markdown report and, when asked, write it
atomically (temp file + rename), so a killed run never leaves a half-written table in python/results/."""

from __future__ import annotations

import os


def emit(lines: list[str], out: str | None) -> str:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, out)
    return text
