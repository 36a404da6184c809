"""Evaluation: perplexity over non-overlapping windows.

``text_or_dataset`` is a string, a local file path, or "wikitext2" (WikiText-2 test split through
``datasets.load_dataset``; needs the network, so tests use local text).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def _load_text(text_or_dataset: Any) -> str:
    if isinstance(text_or_dataset, (str, os.PathLike)) and str(text_or_dataset) in ("wikitext2", "wikitext"):
        try:
            from datasets import load_dataset

            data = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        except Exception as exc:  # no `datasets`, or no network
            raise RuntimeError(f"palu_c.eval.perplexity: could not load WikiText-2 ({type(exc).__name__}: {exc}); "
                               f"pass local text or a file path instead") from exc
        return "\n\n".join(data["text"])
    if isinstance(text_or_dataset, os.PathLike) or (isinstance(text_or_dataset, str) and "\n" not in text_or_dataset
                                                    and len(text_or_dataset) < 4096 and Path(text_or_dataset).is_file()):
        return Path(text_or_dataset).read_text(encoding="utf-8")
    if isinstance(text_or_dataset, str):
        return text_or_dataset
    if hasattr(text_or_dataset, "__getitem__") and not isinstance(text_or_dataset, (bytes, list, tuple)):
        return "\n\n".join(text_or_dataset["text"])
    if isinstance(text_or_dataset, (list, tuple)) and all(isinstance(t, str) for t in text_or_dataset):
        return "\n\n".join(text_or_dataset)
    raise TypeError(f"palu_c.eval.perplexity: cannot read text from {type(text_or_dataset).__name__}")


def perplexity(model, tokenizer, text_or_dataset: Any, *, seq_len: int = 2048, max_windows: int | None = None,
               progress: bool = False) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows of ``seq_len`` tokens (the tail shorter
    than one window is dropped; at most ``max_windows`` windows, from the start).

    Each window runs with a fresh cache (``use_cache=True``), so a Palu model with quantized latents is scored
    on what its cache really returns: every token older than the full-precision residual window is read back
    from its quantized block (the usual KV-quantization protocol; slightly pessimistic for generation, where
    a token's own early queries saw it unquantized)."""
    import torch
    from tqdm.auto import tqdm

    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"palu_c.eval.perplexity: seq_len must be an int >= 2, got {seq_len!r}")
    ids = tokenizer(_load_text(text_or_dataset), return_tensors="pt").input_ids[0]
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"palu_c.eval.perplexity: {ids.numel()} tokens are fewer than one window of {seq_len}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for w in tqdm(range(n), desc="perplexity", disable=not progress):
            window = ids[w * seq_len:(w + 1) * seq_len].unsqueeze(0).to(device)
            logits = model(window, use_cache=True).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
            total += float(loss)
            count += seq_len - 1
    return math.exp(total / count)
