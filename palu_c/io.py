"""Saving and loading compressed models (Palu KV compression, FLRC weight compression, or both): safetensors
weights + a JSON config (format in docs/design/latent_cache.md section 5).

The JSON holds a ``palu`` section (PaluConfig, or null) and, for weight-compressed models, a ``flrc`` section
(FLRCConfig: every targeted projection with its stored rank, the progressive schedule). Files with an ``flrc``
section carry ``format_version`` 2, so a palu_c that predates FLRC refuses them instead of misreading them;
Palu-only files keep version 1. This reader accepts both.

A save writes ``model.safetensors`` and ``palu_config.json`` under temporary names in the target folder and
renames them into place, the config last: a failed save leaves no file under a final name, and a folder whose
config is missing is not a palu_c model. Loading rebuilds the base architecture from the saved transformers
config (no download), installs Palu attention modules of the saved shapes, then LowRankLinear modules of the
saved ranks in place of the FLRC projections, loads the weights strictly and reinstalls the progressive
schedule (and its decode counter).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .kv_config import FORMAT_VERSION, LATENT_CACHE_VERSION, PaluConfig
from .weights_config import FLRCConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "palu_config.json"
FORMAT_VERSION_FLRC = 2  # format_version of files with an "flrc" section
_READABLE_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_FLRC)


def _atomic_write(target: Path, write) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def save(model, path: str | os.PathLike) -> None:
    """Save a Palu- and/or FLRC-compressed model to the folder ``path`` (created if needed)."""
    from safetensors.torch import save_model

    cfg = getattr(model, "palu_config", None)
    flrc = getattr(model, "flrc_config", None)
    if not isinstance(cfg, PaluConfig):
        cfg = None
    if not isinstance(flrc, FLRCConfig):
        flrc = None
    if cfg is None and flrc is None:
        raise ValueError("palu_c.save: the model is not compressed (no palu_config, no flrc_config); call "
                         "palu_c.compress_kv and/or palu_c.compress_weights first")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "palu_c", "format_version": FORMAT_VERSION if flrc is None else FORMAT_VERSION_FLRC,
            "latent_cache_version": LATENT_CACHE_VERSION,
            "base_config": model.config.to_dict(), "palu": None if cfg is None else cfg.to_dict(),
            "flrc": None if flrc is None else flrc.to_dict(),
            # not part of config.to_dict(); restored so a loaded model computes exactly what was saved
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    tmp_weights = tmp_config = None
    try:
        tmp_weights = _atomic_write(folder / WEIGHTS_NAME, lambda p: save_model(model, p, metadata={"format": "pt"}))
        tmp_config = _atomic_write(folder / CONFIG_NAME,
                                   lambda p: Path(p).write_text(json.dumps(meta, indent=1, default=str)))
        os.replace(tmp_weights, folder / WEIGHTS_NAME)
        tmp_weights = None
        os.replace(tmp_config, folder / CONFIG_NAME)
        tmp_config = None
    finally:
        for tmp in (tmp_weights, tmp_config):
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _read_meta(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"palu_c.load: {folder} is not a folder")
    if not config_path.is_file():
        raise FileNotFoundError(f"palu_c.load: {config_path} is missing; {folder} was not written by palu_c.save "
                                f"(or the save did not finish)")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"palu_c.load: {config_path} is corrupt ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "palu_c":
        raise ValueError(f"palu_c.load: {config_path} is not a palu_c config")
    if meta.get("format_version") not in _READABLE_VERSIONS:
        raise ValueError(f"palu_c.load: format version {meta.get('format_version')} is not supported by this palu_c "
                         f"(reads versions {', '.join(map(str, _READABLE_VERSIONS))}); upgrade palu_c")
    return meta


def load(path: str | os.PathLike, *, device: Any = None, dtype: Any = None):
    """Load a model saved by :func:`save`; ``device``/``dtype`` move or cast it after loading."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from .attention import PaluAttention
    from .lowrank_linear import LowRankLinear
    from .weights import install_progressive

    folder = Path(path)
    meta = _read_meta(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"palu_c.load: {weights} is missing")
    base = dict(meta["base_config"])
    model_type = base.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **base)
        cfg = PaluConfig.from_dict(meta["palu"]) if meta.get("palu") is not None else None
        flrc = FLRCConfig.from_dict(meta["flrc"]) if meta.get("flrc") is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"palu_c.load: {folder / CONFIG_NAME} does not describe a model ({exc})") from exc
    attn = meta.get("attn_implementation")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **({"attn_implementation": attn} if attn else {}))
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives every parameter new storage, which unties tied embeddings
    if cfg is None and flrc is None:
        raise ValueError(f"palu_c.load: {folder / CONFIG_NAME} describes neither Palu nor FLRC compression")
    layers = model.model.layers
    if cfg is not None and len(cfg.layers) != len(layers):
        raise ValueError(f"palu_c.load: config lists {len(cfg.layers)} Palu layers for a {len(layers)}-layer model")
    rows = cfg.group_size * cfg.head_dim if cfg is not None else 0
    for layer_cfg, layer in zip(cfg.layers if cfg is not None else [], layers):
        attn = layer.self_attn
        dt = attn.q_proj.weight.dtype
        zeros = lambda *shape: torch.zeros(*shape, dtype=dt)  # noqa: E731
        layer.self_attn = PaluAttention(
            attn, layer_cfg, zeros(layer_cfg.k_rank, cfg.hidden_size), [zeros(rows, r) for r in layer_cfg.k_ranks],
            zeros(layer_cfg.v_rank, cfg.hidden_size), [zeros(rows, r) for r in layer_cfg.v_ranks],
            model.model.rotary_emb, bits=cfg.bits, residual=cfg.residual, quant_group=cfg.quant_group)
    if flrc is not None:
        modules = dict(model.named_modules())
        for p in flrc.projections:
            if p.rank is None:
                continue
            parent_name, _, attr = p.name.rpartition(".")
            parent, mod = modules.get(parent_name), modules.get(p.name)
            if parent is None or not isinstance(mod, torch.nn.Linear) or \
                    (mod.out_features, mod.in_features) != (p.out_features, p.in_features):
                raise ValueError(f"palu_c.load: {folder / CONFIG_NAME} lists FLRC projection {p.name!r} "
                                 f"({p.out_features}x{p.in_features}), which this model does not have")
            try:
                new = LowRankLinear(p.in_features, p.out_features, p.rank, bias=mod.bias is not None,
                                    dtype=mod.weight.dtype)
            except ValueError as exc:
                raise ValueError(f"palu_c.load: {folder / CONFIG_NAME}: bad FLRC projection {p.name!r} ({exc})") from exc
            setattr(parent, attr, new)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"palu_c.load: {weights} is corrupt or does not match {CONFIG_NAME} ({exc})") from exc
    # safetensors stores a tied tensor once (tied embeddings: lm_head.weight); the duplicate name is "missing"
    # but is the very same Parameter as a loaded one. Rotary inv_freq buffers are recomputed, never saved.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(p) for name, p in params.items() if name not in missing}
    missing = [k for k in missing if not (k in params and id(params[k]) in loaded)
               and not k.endswith("inv_freq") and "rotary" not in k]
    if missing or unexpected:
        raise ValueError(f"palu_c.load: {weights} does not match {CONFIG_NAME}: missing {missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
    model.model.rotary_emb.__init__(config=config)  # inv_freq: recomputed, never read from the file
    if cfg is not None:
        model.palu_config = cfg
    if flrc is not None:
        model.flrc_config = flrc
        install_progressive(model, flrc.progressive)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model
