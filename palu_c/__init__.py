"""palu_c: low-rank compression of LLM KV caches (Palu) and weights (FLRC) with a C and CUDA core.

Layers: ``palu_c._C`` (C11 core + CUDA launchers) does the numerics; the modules here validate
arguments, convert DLPack producers to NumPy and call it. See docs and PRODUCT.md for the API.
"""

from __future__ import annotations

from ._version import __version__
from . import _C
from .errors import KernelSpeedWarning, LinAlgError, WhiteningWarning
from .hadamard import hadamard, hadamard_matrix
from .linalg import lowrank_factor, lowrank_factor_grouped, svd
from .quant import QuantizedTensor, quantize
from .ranks import allocate_ranks

__all__ = [
    "__version__", "build_info", "svd", "lowrank_factor", "lowrank_factor_grouped", "hadamard",
    "hadamard_matrix", "quantize", "QuantizedTensor", "allocate_ranks", "LinAlgError", "WhiteningWarning",
    "KernelSpeedWarning",
    # model level (need torch + transformers: imported on first use, so `import palu_c` stays NumPy-only)
    "calibration_tokens", "collect_kv_statistics", "compress_kv", "summary", "kv_bytes_per_token", "kv_cache_bytes",
    "save", "load", "LatentCache", "eval", "compress_weights", "collect_linear_statistics", "LowRankLinear",
]

_LAZY = {
    "calibration_tokens": ("calibration", "calibration_tokens"),
    "collect_kv_statistics": ("statistics", "collect_kv_statistics"),
    "compress_kv": ("kv", "compress_kv"),
    "summary": ("kv", "summary"),
    "kv_bytes_per_token": ("kv", "kv_bytes_per_token"),
    "kv_cache_bytes": ("cache", "kv_cache_bytes"),
    "LatentCache": ("cache", "LatentCache"),
    "save": ("io", "save"),
    "load": ("io", "load"),
    "eval": ("eval", None),
    "compress_weights": ("weights", "compress_weights"),
    "collect_linear_statistics": ("statistics", "collect_linear_statistics"),
    "LowRankLinear": ("lowrank_linear", "LowRankLinear"),
}


def __getattr__(name: str):
    """Model-level names load torch/transformers lazily, on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module 'palu_c' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


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
