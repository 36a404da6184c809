"""Shared by the benchmark/evaluation drivers: print a finished markdown report and, when asked, write it
atomically (temp file + rename), so a killed run never leaves a half-written table in python/results/; and the
corpus location and calibration/evaluation arguments the evaluations share."""

from __future__ import annotations

import os

# ../shared beside the checkout (CI layout); one level higher for a git worktree under <root>/wt/<name>
_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORPUS = next((p for p in (os.path.join(_REPO, "..", "shared", "data", "corpus"),
                           os.path.join(_REPO, "..", "..", "shared", "data", "corpus")) if os.path.isdir(p)),
              os.path.join(_REPO, "..", "shared", "data", "corpus"))


def add_corpus_arguments(parser) -> None:
    """--calib-file (Emma), --eval-file (Pride and Prejudice), --calib-samples, --eval-windows, --seq-len."""
    parser.add_argument("--calib-file", default=os.path.join(CORPUS, "austen_emma.txt"))
    parser.add_argument("--eval-file", default=os.path.join(CORPUS, "austen_pride_and_prejudice.txt"))
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)


def emit(lines: list[str], out: str | None) -> str:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, out)
    return text
