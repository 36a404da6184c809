"""House rule 1 (STYLE.md): numeric C files and CUDA kernels never include Python, NumPy or torch headers;
only the binding files (module.c, py_*.c, py_common.*) do. Also: every C source and header is listed in the
layering (a new file must be one or the other)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = re.compile(r'#\s*include\s*[<"](Python\.h|numpy/|torch/|ATen/|py_common\.h)')


def binding_file(path: Path) -> bool:
    return path.name == "module.c" or path.name.startswith("py_")


def test_numeric_files_and_kernels_do_not_include_python():
    offenders = []
    for path in sorted((ROOT / "csrc").glob("*.[ch]")) + sorted((ROOT / "kernels").glob("*.cu*")):
        if path.parent.name == "csrc" and binding_file(path):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "numeric/kernel files must not include Python/NumPy/torch headers:\n" + "\n".join(offenders)


def test_there_are_numeric_files_to_check():
    # guards the test above against silently checking nothing after a move
    assert len(list((ROOT / "csrc").glob("*.c"))) >= 5
    assert list((ROOT / "kernels").glob("*.cu"))
