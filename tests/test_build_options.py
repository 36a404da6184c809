"""setup.py's build options that CI does not otherwise exercise: PALU_C_CUDA_OBJECTS (link kernel objects compiled
elsewhere, python/build_cuda_objects.sh) must refuse an incomplete directory with a message that names the missing
objects and the way out, before compiling anything. The positive path (linking prebuilt objects) is exercised on
the GPU machine by python/gpu_variant_check.sh and python/gpu_final_check.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_build(tmp_path: Path, objects_dir: Path) -> subprocess.CompletedProcess:
    # NVCC points at any existing file: with prebuilt objects nvcc is never run, and the check comes first
    env = dict(os.environ, PALU_C_CUDA="1", PALU_C_CUDA_OBJECTS=str(objects_dir), NVCC=sys.executable)
    env.pop("PALU_C_SANITIZE", None)
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"), "--build-lib",
         str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("present", [[], ["latent_decode"]])
def test_missing_prebuilt_kernel_objects_are_named(tmp_path, present):
    objects = tmp_path / "objs"
    objects.mkdir()
    for stem in present:
        (objects / f"{stem}.o").write_bytes(b"")
    proc = run_build(tmp_path, objects)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "PALU_C_CUDA_OBJECTS" in out and "build_cuda_objects.sh" in out, out[-2000:]
    kernels = sorted(p.stem for p in (ROOT / "kernels").glob("*.cu"))
    assert kernels, "no kernels/*.cu to check against"
    for stem in kernels:
        assert (f"{stem}.o" in out) == (stem not in present), (stem, out[-2000:])
    assert not list((tmp_path / "lib").rglob("*.so")), "no extension may be written"
