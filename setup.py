"""Build of palu_c's extension ``palu_c._C``.

Design
------
* ``csrc/*.c`` is compiled as C11 with ``-Wall -Wextra`` against CPython and NumPy headers only.
* BLAS/LAPACK: no link-time dependency at all. The extension looks up SciPy's exported LAPACK/BLAS
  function pointers (``scipy.linalg.cython_lapack.__pyx_capi__``) when it is imported
  (``csrc/py_lapack.c``). Why this route: SciPy ships and maintains one OpenBLAS build for every
  platform it supports, so a pip install needs no system BLAS, no vendored copy of a shared library,
  no rpath that could dangle after build isolation, and the sanitizer build links nothing extra.
* CUDA: when ``nvcc`` is found (or ``PALU_C_CUDA=1``) every ``kernels/*.cu`` is compiled by nvcc
  for sm_90a plus compute_90 PTX and linked into the same extension with the CUDA runtime linked
  statically, so ``import palu_c`` still works on a machine with no GPU and no driver.
  ``PALU_C_CUDA=0`` forces a CPU-only build; ``palu_c.build_info()`` says which one was built.
* ``PALU_C_CUDA_OBJECTS=DIR`` links the kernel objects ``DIR/<source>.o`` that an earlier build compiled
  (same nvcc, same flags; ``python/build_cuda_objects.sh`` makes them) instead of running nvcc. Why: on the
  GPU machine the nvcc pass over ``latent_decode.cu`` is ~90 s of metered device time per call, and the
  objects do not depend on the Python version. Every ``kernels/*.cu`` must have its object there.
* ``PALU_C_SANITIZE=1`` adds AddressSanitizer/UBSan instrumentation (CPU-only builds; see Makefile).
* ``PALU_C_WERROR=1`` turns every C and nvcc warning into an error. ``make test`` sets it under CI (a quiet pip
  install hides warnings: one in the compute_90 pass went unseen for a session); a user's install does not, so a
  newer compiler's new warning cannot break it.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value in (None, "") else value.strip().lower()


def _find_nvcc() -> str | None:
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _nvcc_flags() -> list[str]:
    """The nvcc arguments of every kernel object, from kernels/nvcc.flags (shared with python/build_cuda_objects.sh;
    paths in it are relative to the repository root, where nvcc runs)."""
    lines = (line.split("#", 1)[0].split() for line in (ROOT / "kernels" / "nvcc.flags").read_text().splitlines())
    return [arg for line in lines for arg in line]


def _want_cuda() -> tuple[bool, str | None]:
    flag = _env_flag("PALU_C_CUDA")
    if flag in ("0", "false", "no", "off"):
        return False, None
    nvcc = _find_nvcc()
    if flag in ("1", "true", "yes", "on") and nvcc is None:
        raise RuntimeError("PALU_C_CUDA=1 but nvcc was not found; set NVCC=/path/to/nvcc or PALU_C_CUDA=0")
    return nvcc is not None, nvcc


def _cudart_static_dir(nvcc: str) -> str:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), str(Path(nvcc).resolve().parent.parent),
             "/usr/local/cuda"]
    for home in filter(None, homes):
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            if (Path(home) / lib / "libcudart_static.a").exists():
                return str(Path(home) / lib)
    raise RuntimeError(f"libcudart_static.a not found next to {nvcc}; set CUDA_HOME or build with PALU_C_CUDA=0")


class PaluBuildExt(build_ext):
    """build_ext that also runs nvcc over kernels/*.cu when CUDA is wanted."""

    def build_extension(self, ext: Extension) -> None:
        use_cuda, nvcc = _want_cuda()
        sanitize = _env_flag("PALU_C_SANITIZE") in ("1", "true", "yes", "on")
        if sanitize and use_cuda:
            print("palu_c: sanitizer build is CPU-only; skipping CUDA kernels")
            use_cuda = False
        stamp = self._force_on_flavour_change(f"cuda={use_cuda} sanitize={sanitize}")
        if _werror():
            ext.extra_compile_args += ["-Werror"]
        if sanitize:
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g", "-DPALU_SANITIZE"]
            ext.extra_compile_args += san
            ext.extra_link_args += ["-fsanitize=address,undefined"]
        if use_cuda:
            ext.extra_objects += self._compile_cuda(nvcc)
            ext.library_dirs.append(_cudart_static_dir(nvcc))
            ext.libraries += ["cudart_static", "dl", "rt", "pthread", "stdc++"]
            ext.define_macros.append(("PALU_WITH_CUDA", "1"))
            print(f"palu_c: building with CUDA kernels (nvcc: {nvcc})")
        else:
            print("palu_c: building CPU-only (no nvcc, or PALU_C_CUDA=0)")
        super().build_extension(ext)
        stamp.write_text(f"cuda={use_cuda} sanitize={sanitize}")  # only once the build succeeded

    def _force_on_flavour_change(self, flavour: str) -> Path:
        """Rebuild everything when the build flavour (CUDA or not, sanitizers or not) changed since the last
        build in this build_temp: setuptools compares timestamps only and would keep the old extension."""
        stamp = Path(self.build_temp) / "palu_flavour.txt"
        if not stamp.exists() or stamp.read_text() != flavour:
            self.force = True
            stamp.unlink(missing_ok=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        return stamp

    def _compile_cuda(self, nvcc: str) -> list[str]:
        prebuilt = os.environ.get("PALU_C_CUDA_OBJECTS")
        if prebuilt:
            kernels = sorted((ROOT / "kernels").glob("*.cu"))
            objects = [Path(prebuilt).resolve() / (source.stem + ".o") for source in kernels]
            missing = [str(o) for o in objects if not o.is_file()]
            if missing:
                raise RuntimeError(f"PALU_C_CUDA_OBJECTS={prebuilt}: missing {', '.join(missing)}; build them with "
                                   "python/build_cuda_objects.sh or unset PALU_C_CUDA_OBJECTS")
            print(f"palu_c: linking prebuilt kernel objects from {prebuilt} (nvcc not run)")
            return [str(o) for o in objects]
        out_dir = Path(self.build_temp) / "kernels"
        out_dir.mkdir(parents=True, exist_ok=True)
        flags = _nvcc_flags() + (["--Werror", "all-warnings", "-Xcompiler", "-Werror"] if _werror() else [])
        commands = [[nvcc, "-c", str(source), "-o", str((out_dir / (source.stem + ".o")).resolve()), *flags]
                    for source in sorted((ROOT / "kernels").glob("*.cu"))]
        for cmd in commands:
            print(" ".join(cmd))
        # the sources compile side by side (latent_decode.cu alone takes most of the time; the rest hide behind it)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(commands), os.cpu_count() or 1))) as pool:
            for future in [pool.submit(subprocess.check_call, cmd, cwd=ROOT) for cmd in commands]:
                future.result()
        return [cmd[cmd.index("-o") + 1] for cmd in commands]


def _werror() -> bool:
    return _env_flag("PALU_C_WERROR") in ("1", "true", "yes", "on")


def _version() -> str:
    for line in (ROOT / "palu_c" / "_version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("palu_c/_version.py has no __version__")


extension = Extension(
    "palu_c._C",
    sources=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c")),
    include_dirs=[numpy.get_include(), "csrc", "kernels", "third_party/dlpack/include"],
    define_macros=[("PALU_VERSION", f'"{_version()}"')],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-O3", "-fvisibility=hidden"],
    extra_link_args=[],
    extra_objects=[],
    libraries=["m"],
    # headers, kernels and their nvcc flags: a change in any of them rebuilds the extension
    depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.h"))
    + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels").glob("*.cu*")) + ["kernels/nvcc.flags"],
)

setup(
    version=_version(),
    ext_modules=[extension],
    cmdclass={"build_ext": PaluBuildExt},
)
