"""palu_c: low-rank compression of LLM KV caches (Palu) and weights (FLRC) with a C and CUDA core.

Layers: ``palu_c._C`` (C11 core + CUDA launchers) does the numerics; the modules here validate
arguments, convert DLPack producers to NumPy and call it. See docs and PRODUCT.md for the API.
"""

from __future__ import annotations

from ._version import __version__
from . import _C
from .errors import LinAlgError, WhiteningWarning
from .hadamard import hadamard, hadamard_matrix
from .linalg import lowrank_factor, lowrank_factor_grouped, svd
from .quant import QuantizedTensor, quantize
from .ranks import allocate_ranks

__all__ = [
    "__version__", "build_info", "svd", "lowrank_factor", "lowrank_factor_grouped", "hadamard",
    "hadamard_matrix", "quantize", "QuantizedTensor", "allocate_ranks", "LinAlgError", "WhiteningWarning",
]


def build_info() -> dict:
    """Facts about this build: version, LAPACK/BLAS route and library, CUDA compiled or not, devices visible.

    Returns
    -------
    dict
        ``version``, ``lapack_route``, ``lapack`` (SciPy's BLAS/LAPACK library description),
        ``cuda_compiled`` (bool), ``cuda_archs``, ``cuda_runtime_version``, ``cuda_devices`` (int),
        ``cuda_status`` (None when the CUDA runtime answered, else why not).
    """
    info = dict(_C.build_info())
    try:
        import scipy

        deps = scipy.show_config(mode="dicts")["Build Dependencies"]
        lapack = deps.get("lapack", {})
        info["lapack"] = f"{lapack.get('name', '?')} {lapack.get('version', '')} (via SciPy {scipy.__version__})".strip()
    except Exception as exc:  # show_config layouts differ across SciPy versions; never fail build_info
        info["lapack"] = f"unknown ({type(exc).__name__})"
    return info
