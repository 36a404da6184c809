"""Calibration token windows for Palu and FLRC: text in, a (n_samples, seq_len) LongTensor out.

Shape legend: N calibration samples, T tokens per sample (seq_len).

The text is tokenized once as a whole, then N windows of T consecutive tokens are cut at offsets drawn
uniformly from a ``torch.Generator`` seeded with ``seed`` (Palu draws WikiText-2 windows the same way).
Windows may overlap. torch is imported lazily: ``import palu_c`` never needs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

WIKITEXT_NAMES = frozenset({"wikitext", "wikitext2", "wikitext-2", "wikitext-2-raw-v1"})
_LOCAL_HINT = "pass local text instead: a str, a list of str, or the path of a UTF-8 .txt file"


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"calibration_tokens: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"calibration_tokens: {name} must be >= 1, got {value}")
    return value


def _load_wikitext2() -> str:
    """WikiText-2 raw train split, documents joined by blank lines (needs ``datasets`` and the network)."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"calibration_tokens: the 'wikitext2' corpus needs the 'datasets' package (pip install datasets); "
            f"or {_LOCAL_HINT}"
        ) from exc
    try:
        dataset = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    except Exception as exc:  # offline, hub errors, cache corruption: all end the same way for the user
        raise RuntimeError(
            f"calibration_tokens: could not load wikitext-2-raw-v1 with datasets "
            f"({type(exc).__name__}: {exc}); {_LOCAL_HINT}"
        ) from exc
    return _dataset_text(dataset)


def _dataset_text(dataset: Any) -> str:
    columns = dataset.column_names
    if isinstance(columns, dict):  # a DatasetDict: several splits
        raise TypeError(
            f"calibration_tokens: got a dataset with splits {sorted(columns)}; pass one split, e.g. ds['train']"
        )
    if "text" not in columns:
        raise ValueError(f"calibration_tokens: the dataset has no 'text' column (columns: {list(columns)})")
    rows = dataset["text"]
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise TypeError(f"calibration_tokens: dataset row {i} of 'text' is {type(row).__name__}, not str")
    return "\n\n".join(rows)


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"calibration_tokens: no such text file: {path}")
    return path.read_text(encoding="utf-8")


def _resolve_text(source: Any) -> str:
    """The calibration text for any accepted source (see :func:`calibration_tokens`)."""
    if isinstance(source, os.PathLike):
        return _read_file(Path(source))
    if isinstance(source, str):
        if source.strip().lower() in WIKITEXT_NAMES:
            return _load_wikitext2()
        # A one-line string that names a file is a path; one ending in .txt that names none is a missing file.
        if "\n" not in source and len(source) < 4096:
            if os.path.isfile(source):
                return _read_file(Path(source))
            if source.lower().endswith(".txt"):
                raise FileNotFoundError(f"calibration_tokens: no such text file: {source}")
        return source
    if isinstance(source, (list, tuple)):
        for i, item in enumerate(source):
            if not isinstance(item, str):
                raise TypeError(
                    f"calibration_tokens: texts_or_dataset[{i}] is {type(item).__name__}; a list must hold str"
                )
        return "\n\n".join(source)
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        return _dataset_text(source)
    raise TypeError(
        f"calibration_tokens: texts_or_dataset must be a str (text, file path or 'wikitext2'), a list of str, "
        f"an os.PathLike, or a datasets.Dataset with a 'text' column; got {type(source).__name__}"
    )


def _token_ids(tokenizer: Any, text: str) -> "torch.Tensor":
    import torch

    if not callable(tokenizer):
        raise TypeError(f"calibration_tokens: tokenizer must be callable (a transformers tokenizer), "
                        f"got {type(tokenizer).__name__}")
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    try:
        ids = encoded["input_ids"]
    except (KeyError, TypeError, IndexError) as exc:
        raise TypeError("calibration_tokens: the tokenizer's output has no 'input_ids'") from exc
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"calibration_tokens: the tokenizer returned {ids.dtype} ids, expected integers")
    return ids.reshape(-1).to(torch.long)


def calibration_tokens(tokenizer: Any, texts_or_dataset: Any, n_samples: int, seq_len: int,
                       seed: int = 0) -> "torch.Tensor":
    """Draw ``n_samples`` windows of ``seq_len`` tokens from a calibration text.

    Parameters
    ----------
    tokenizer : callable
        A transformers tokenizer (called once as ``tokenizer(text, return_tensors="pt",
        add_special_tokens=False)``; anything returning a mapping with ``"input_ids"`` works).
    texts_or_dataset : str, list of str, os.PathLike or datasets.Dataset
        - ``"wikitext2"`` (or ``"wikitext"``): the WikiText-2 raw train split through ``datasets`` (Palu's
          calibration set; needs the package and the network);
        - a one-line str naming an existing file, or an ``os.PathLike``: that file, read as UTF-8;
        - any other str: the text itself (a one-line str ending in ``.txt`` that names no file is an error);
        - a list or tuple of str: the texts joined by blank lines;
        - a ``datasets.Dataset`` (anything with ``column_names`` and a ``"text"`` column): its rows joined
          by blank lines.
    n_samples : int
        N >= 1 windows.
    seq_len : int
        T >= 1 tokens per window; the text must hold at least T tokens.
    seed : int
        Seed of the window offsets: the same seed, text and tokenizer give the same windows.

    Returns
    -------
    torch.LongTensor
        (N, T) token ids, contiguous, on the CPU.
    """
    import torch

    n_samples = _positive_int(n_samples, "n_samples")
    seq_len = _positive_int(seq_len, "seq_len")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"calibration_tokens: seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"calibration_tokens: seed must be in [0, 2**64), got {seed}")
    text = _resolve_text(texts_or_dataset)
    if not text.strip():
        raise ValueError("calibration_tokens: the calibration text is empty")
    ids = _token_ids(tokenizer, text)
    n_tokens = ids.numel()
    if n_tokens < seq_len:
        raise ValueError(
            f"calibration_tokens: the text has {n_tokens} tokens but one window needs seq_len={seq_len}; "
            f"pass more text or a smaller seq_len"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_tokens - seq_len + 1, (n_samples,), generator=generator)
    # (N, T) gather of the windows: start offsets plus 0..T-1.
    index = starts[:, None] + torch.arange(seq_len)[None, :]
    return ids[index].contiguous()
