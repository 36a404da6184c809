"""Calibration statistics of the K/V projections: input Grams (whitening) and Fisher scores (rank search).

Shape legend: N calibration samples, B batch, T tokens per sample, L decoder layers, C hidden size (the input
width of k_proj and v_proj), O = kv_heads * head_dim (their output width).

For each decoder layer i of a Llama/Mistral/Qwen2-style model (``model.model.layers[i].self_attn`` with
``k_proj`` and ``v_proj`` as ``nn.Linear``):

- ``gram[i]`` (C, C) float64 = X^T X summed over every calibration token, X the input of k_proj (the same
  tensor feeds v_proj). Collected by a forward pre-hook that adds each batch's X^T X in float64 and keeps
  nothing else.
- ``fisher_k_rows[i]``, ``fisher_v_rows[i]`` (O,) float64: for each output row of the weight, the sum over its
  C input columns and over the N samples of grad^2, where grad is the gradient of ONE sample's mean next-token
  cross-entropy (Palu: one backward pass per sample). With B > 1 samples per batch the summed loss is
  back-propagated once and each sample's own weight gradient is rebuilt exactly from the hooked input X_b and
  output gradient dY_b as dY_b^T X_b (samples of a causal LM do not interact, so dY_b is the gradient of
  sample b's loss alone); it is computed in float64, one sample at a time.

Memory: L*C*C float64 Grams and 2*L*O float64 row sums, plus per batch what the forward/backward itself needs
(B*T*(2O + C) per layer is held until the batch's backward ends). Nothing grows with N.

Cache: with ``cache_dir`` (or env ``PALU_C_CACHE_DIR``) results are stored as ``kv_stats-<sha256>.pt``. The
key hashes the model class, ``config.to_json_string()``, the name, dtype, shape and bytes of EVERY parameter
and buffer, the calibration ids (bytes, shape) and the grams/fisher flags. Hashing every weight is
content-faithful but costs one pass over the model: sha256 runs at ~1-2 GB/s on one core (~10 s for a 7B fp16
model), plus a device-to-host copy for GPU models; cheap next to the forward and backward passes it saves.
batch_size and device are not in the key: they change results only by rounding. Files are written to a
temporary name and renamed (atomic); an unreadable or inconsistent file is reported with a
``StatisticsCacheWarning`` and recomputed.

torch and tqdm are imported lazily: ``import palu_c`` never needs them.
"""

from __future__ import annotations

import contextlib

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")
CACHE_FORMAT = "palu_c.kv_statistics"
CACHE_VERSION = 1
CACHE_ENV = "PALU_C_CACHE_DIR"


class StatisticsCacheWarning(UserWarning):
    """A cached statistics file could not be read or written; the statistics were (re)computed."""


@dataclass
class KVStatistics:
    """Per-layer K/V calibration statistics (see the module docstring for the exact definitions).

    Attributes
    ----------
    gram : list of torch.Tensor or None
        L tensors (C, C) float64, X^T X of the k_proj/v_proj input; None when collected with grams=False.
    n_tokens : int
        Tokens summed into every Gram (N * T; 0 with grams=False).
    fisher_k_rows, fisher_v_rows : list of torch.Tensor or None
        L tensors (O,) float64: per output row, sum over input columns and samples of grad^2.
    n_fisher_samples : int
        Samples (one backward each) summed into the Fisher rows (0 with fisher=False).
    in_features : int
        C, the input width of k_proj and v_proj.
    cache_key : str or None
        sha256 of the inputs when a cache was used, else None.
    """

    gram: list | None
    n_tokens: int
    fisher_k_rows: list | None
    fisher_v_rows: list | None
    n_fisher_samples: int
    in_features: int
    cache_key: str | None = None

    @property
    def num_layers(self) -> int:
        rows = self.gram if self.gram is not None else self.fisher_k_rows
        return len(rows) if rows is not None else 0

    def fisher_blocks(self, layer: int, group_rows: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Palu importance of each block of ``group_rows`` consecutive output rows of k_proj and v_proj.

        importance = sqrt(mean over the block's weight elements and over samples of grad^2)
                   = sqrt(sum of the block's rows / (group_rows * in_features * n_fisher_samples)).

        Parameters
        ----------
        layer : int
            Decoder layer, 0 <= layer < num_layers.
        group_rows : int
            Rows per block (e.g. group_size * head_dim); must divide O.

        Returns
        -------
        (k_blocks, v_blocks) : tuple of torch.Tensor
            Each (O / group_rows,) float64.
        """
        if self.fisher_k_rows is None or self.fisher_v_rows is None or self.n_fisher_samples < 1:
            raise ValueError("fisher_blocks: these statistics were collected with fisher=False")
        layer = _as_int(layer, "layer", "fisher_blocks")
        if not 0 <= layer < len(self.fisher_k_rows):
            raise ValueError(f"fisher_blocks: layer must be in [0, {len(self.fisher_k_rows)}), got {layer}")
        group_rows = _as_int(group_rows, "group_rows", "fisher_blocks")
        blocks = []
        for name, rows in (("k", self.fisher_k_rows[layer]), ("v", self.fisher_v_rows[layer])):
            if group_rows < 1 or rows.numel() % group_rows:
                raise ValueError(
                    f"fisher_blocks: group_rows={group_rows} must be >= 1 and divide the {rows.numel()} "
                    f"{name}_proj output rows of layer {layer}"
                )
            denom = group_rows * self.in_features * self.n_fisher_samples
            blocks.append((rows.reshape(-1, group_rows).sum(dim=1) / denom).sqrt())
        return blocks[0], blocks[1]


def _as_int(value: Any, name: str, func: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{func}: {name} must be an int, got {type(value).__name__}")
    return value


def _kv_projections(model: Any) -> list:
    """[(k_proj, v_proj)] per decoder layer; TypeError naming the supported families otherwise."""
    from torch import nn

    hint = (f"collect_kv_statistics: unsupported model {type(model).__name__}: expected decoder layers at "
            f"model.model.layers[i].self_attn with k_proj and v_proj as nn.Linear, as in the "
            f"{', '.join(SUPPORTED_FAMILIES)} families")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(model, nn.Module) or layers is None or len(layers) == 0:
        raise TypeError(hint)
    projections = []
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        k_proj, v_proj = getattr(attn, "k_proj", None), getattr(attn, "v_proj", None)
        if not isinstance(k_proj, nn.Linear) or not isinstance(v_proj, nn.Linear):
            raise TypeError(f"{hint} (layer {i} has k_proj {type(k_proj).__name__}, v_proj "
                            f"{type(v_proj).__name__})")
        if k_proj.in_features != v_proj.in_features:
            raise TypeError(f"{hint} (layer {i}: k_proj and v_proj read inputs of different widths)")
        projections.append((k_proj, v_proj))
    if len({k.in_features for k, _ in projections}) != 1:
        raise TypeError(f"{hint} (k_proj input widths differ across layers)")
    return projections


def _validate_calib(calib: Any, vocab: int | None) -> "torch.Tensor":
    import torch

    func = "collect_kv_statistics"
    if not isinstance(calib, torch.Tensor):
        raise TypeError(f"{func}: calib must be a torch.LongTensor (n_samples, seq_len), "
                        f"got {type(calib).__name__}; see palu_c.calibration_tokens")
    if calib.dtype != torch.long:
        raise TypeError(f"{func}: calib must hold int64 token ids, got {calib.dtype}; convert with calib.long()")
    if calib.dim() != 2:
        raise ValueError(f"{func}: calib must be 2-D (n_samples, seq_len), got shape {tuple(calib.shape)}")
    if calib.shape[0] < 1 or calib.shape[1] < 2:
        raise ValueError(f"{func}: calib needs n_samples >= 1 and seq_len >= 2 (one next-token target), "
                         f"got shape {tuple(calib.shape)}")
    low, high = int(calib.min()), int(calib.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(f"{func}: calib token ids must lie in [0, {vocab}) (the model's vocabulary), "
                         f"got ids in [{low}, {high}]")
    return calib


def _vocab_size(model: Any) -> int | None:
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is not None and hasattr(embed, "num_embeddings"):
        return int(embed.num_embeddings)
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def _tensor_bytes(t: "torch.Tensor") -> memoryview:
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _model_calib_hash(tag: str, model: Any, calib: "torch.Tensor") -> "hashlib._Hash":
    """SHA-256 over a format tag, the model's class, config, every parameter and buffer, and the calibration
    tokens: the part of a statistics cache key that says "same model, same data"."""
    h = hashlib.sha256()
    h.update(f"{tag}\0{type(model).__name__}\0".encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_string"):
        h.update(config.to_json_string().encode())
    tensors = list(model.named_parameters()) + [("buffer:" + n, b) for n, b in model.named_buffers()]
    for name, t in tensors:
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    h.update(f"\0calib\0{tuple(calib.shape)}\0".encode())
    h.update(_tensor_bytes(calib))
    return h


def _cache_key(model: Any, calib: "torch.Tensor", grams: bool, fisher: bool) -> str:
    h = _model_calib_hash(f"{CACHE_FORMAT}/{CACHE_VERSION}", model, calib)
    h.update(f"\0grams={grams}\0fisher={fisher}".encode())
    return h.hexdigest()


def _check_loaded(data: Any, key: str, projections: list, grams: bool, fisher: bool) -> KVStatistics:
    """Rebuild KVStatistics from a loaded cache dict; ValueError on anything inconsistent."""
    import torch

    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        raise ValueError("not a palu_c KV statistics file of this version")
    if data.get("key") != key:
        raise ValueError("its key does not match its file name")
    n = len(projections)
    c = projections[0][0].in_features

    def tensors(name: str, shapes: list) -> list:
        values = data.get(name)
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"'{name}' is not a list of {n} tensors")
        for value, shape in zip(values, shapes):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or tuple(value.shape) != shape:
                raise ValueError(f"'{name}' holds a tensor of the wrong dtype or shape")
            if not torch.isfinite(value).all():
                raise ValueError(f"'{name}' holds NaN or Inf")
        return values

    stats = KVStatistics(
        gram=tensors("gram", [(c, c)] * n) if grams else None,
        n_tokens=int(data["n_tokens"]),
        fisher_k_rows=tensors("fisher_k_rows", [(k.out_features,) for k, _ in projections]) if fisher else None,
        fisher_v_rows=tensors("fisher_v_rows", [(v.out_features,) for _, v in projections]) if fisher else None,
        n_fisher_samples=int(data["n_fisher_samples"]),
        in_features=int(data["in_features"]),
        cache_key=key,
    )
    if stats.in_features != c:
        raise ValueError("its in_features does not match the model")
    return stats


def _load_cache(path: Path, key: str, projections: list, grams: bool, fisher: bool) -> KVStatistics | None:
    import torch

    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return _check_loaded(data, key, projections, grams, fisher)
    except Exception as exc:  # any unreadable file (truncated, foreign, wrong layout) means: recompute
        warnings.warn(f"collect_kv_statistics: ignoring the unreadable cache file {path} "
                      f"({type(exc).__name__}: {exc}); recomputing", StatisticsCacheWarning, stacklevel=3)
        return None


def _save_cache_file(path: Path, data: dict, prefix: str, func: str, stacklevel: int) -> None:
    """torch.save to a temp file beside ``path``, then rename: a killed run never leaves a half-written file. A
    read-only or full cache directory only warns (``stacklevel`` frames up: the user's call); the computed
    statistics are returned all the same."""
    import torch

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        torch.save(data, tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"{func}: could not write the cache file {path} ({exc})", StatisticsCacheWarning,
                      stacklevel=stacklevel)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _save_cache(path: Path, stats: KVStatistics) -> None:
    data = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "key": stats.cache_key,
        "gram": stats.gram, "n_tokens": stats.n_tokens,
        "fisher_k_rows": stats.fisher_k_rows, "fisher_v_rows": stats.fisher_v_rows,
        "n_fisher_samples": stats.n_fisher_samples, "in_features": stats.in_features,
    }
    _save_cache_file(path, data, ".kv_stats-", "collect_kv_statistics", stacklevel=4)


def _accumulator_device(device: "torch.device") -> "torch.device":
    import torch

    # float64 accumulation: CPU and CUDA have it, other backends (MPS) do not.
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def _sample_losses(logits: "torch.Tensor", ids: "torch.Tensor") -> "torch.Tensor":
    """(B,) mean next-token cross-entropy of each sample; logits (B, T, V), ids (B, T)."""
    import torch
    from torch.nn import functional as F

    pred = logits[:, :-1]
    if pred.dtype not in (torch.float32, torch.float64):
        pred = pred.float()
    b, t1, v = pred.shape
    ce = F.cross_entropy(pred.reshape(b * t1, v), ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(b, t1).mean(dim=1)


def _check_device_and_cache_dir(device: Any, cache_dir: Any, func: str) -> Any:
    """Validate ``device`` (None or anything torch.device accepts) and ``cache_dir`` (None, str or PathLike; None
    falls back to the environment variable CACHE_ENV). Returns the cache folder to use, or None."""
    import torch

    if device is not None:
        try:
            torch.device(device)
        except (TypeError, RuntimeError) as exc:
            raise ValueError(f"{func}: device {device!r} is not a torch device") from exc
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or None
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"{func}: cache_dir must be a str or os.PathLike, got {type(cache_dir).__name__}")
    return cache_dir


@contextlib.contextmanager
def _statistics_run(model: Any, device: Any, func: str):
    """Set the model up for a statistics pass and leave it as found, also on error.

    Moves it to ``device`` when given (refusing a model spread over several devices), puts it in eval mode (no
    dropout: Grams and gradients of the deterministic model), and yields ``(hooks, run_device, acc_device)``:
    a list the caller appends its hook handles to, the device the model runs on and the one accumulators live
    on. On exit the hooks are removed and the requires_grad flags, train/eval modes and device restored.
    """
    import torch

    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    moved_from = None
    hooks: list = []
    try:
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            homes = {p.device for p in model.parameters()}
            if homes != {device}:
                if len(homes) > 1:
                    raise ValueError(f"{func}: the model is spread over several devices "
                                     f"({sorted(map(str, homes))}); pass device=None to run it where it is")
                moved_from = homes.pop()
                model.to(device)
        run_device = model.get_input_embeddings().weight.device
        model.eval()
        yield hooks, run_device, _accumulator_device(run_device)
    finally:
        for handle in hooks:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        if moved_from is not None:
            model.to(moved_from)


def _collect(model: Any, projections: list, calib: "torch.Tensor", grams: bool, fisher: bool,
             batch_size: int, progress: bool, device: Any) -> KVStatistics:
    import torch
    from tqdm.auto import tqdm

    n_layers = len(projections)
    c = projections[0][0].in_features
    with _statistics_run(model, device, "collect_kv_statistics") as (hooks, run_device, acc_device):

        gram_acc = [torch.zeros(c, c, dtype=torch.float64, device=acc_device) for _ in range(n_layers)] \
            if grams else None
        k_rows = [torch.zeros(k.out_features, dtype=torch.float64, device=acc_device) for k, _ in projections] \
            if fisher else None
        v_rows = [torch.zeros(v.out_features, dtype=torch.float64, device=acc_device) for _, v in projections] \
            if fisher else None
        captured: dict = {}

        def gram_hook(i: int):
            def hook(_module, args, kwargs):
                x = args[0] if args else kwargs["input"]
                x = x.detach().reshape(-1, x.shape[-1]).to(device=acc_device, dtype=torch.float64)
                gram_acc[i].addmm_(x.T, x)

            return hook

        def capture_hook(key: tuple):
            def hook(_module, args, kwargs, output):
                x = args[0] if args else kwargs["input"]
                captured[key] = (x.detach(), output)

            return hook

        for i, (k_proj, v_proj) in enumerate(projections):
            if grams:
                hooks.append(k_proj.register_forward_pre_hook(gram_hook(i), with_kwargs=True))
            if fisher:
                hooks.append(k_proj.register_forward_hook(capture_hook((i, 0)), with_kwargs=True))
                hooks.append(v_proj.register_forward_hook(capture_hook((i, 1)), with_kwargs=True))
        if fisher:
            for p in model.parameters():
                p.requires_grad_(False)
            for k_proj, v_proj in projections:
                k_proj.weight.requires_grad_(True)
                v_proj.weight.requires_grad_(True)

        n = calib.shape[0]
        what = " + ".join(name for name, on in (("Fisher", fisher), ("Gram", grams)) if on)
        bar = tqdm(total=n, desc=f"KV statistics ({what})", unit="sample", disable=not progress)
        try:
            for start in range(0, n, batch_size):
                # A clone is a normal tensor even when calib was made under torch.inference_mode().
                ids = calib[start:start + batch_size].to(run_device).clone()
                if fisher:
                    _fisher_batch(model, ids, captured, k_rows, v_rows, acc_device)
                else:
                    with torch.no_grad():
                        model.model(input_ids=ids, use_cache=False)
                bar.update(ids.shape[0])
        finally:
            bar.close()
        return KVStatistics(
            gram=[g.cpu() for g in gram_acc] if grams else None,
            n_tokens=int(calib.numel()) if grams else 0,
            fisher_k_rows=[r.cpu() for r in k_rows] if fisher else None,
            fisher_v_rows=[r.cpu() for r in v_rows] if fisher else None,
            n_fisher_samples=int(n) if fisher else 0,
            in_features=c,
        )


def _fisher_batch(model: Any, ids: "torch.Tensor", captured: dict, k_rows: list, v_rows: list,
                  acc_device: "torch.device") -> None:
    """One forward and one backward of the batch's summed per-sample losses; per-sample grad^2 row sums."""
    import torch

    captured.clear()
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            loss = _sample_losses(logits, ids).sum()
            del logits
            keys = sorted(captured)
            grads = torch.autograd.grad(loss, [captured[key][1] for key in keys], allow_unused=True)
        for key, dy in zip(keys, grads):
            if dy is None:  # this projection does not reach the loss: zero gradient
                continue
            x = captured[key][0]
            rows = (k_rows if key[1] == 0 else v_rows)[key[0]]
            for b in range(ids.shape[0]):
                # Sample b's own weight gradient (O, C): sum over its tokens of dY_t x_t^T.
                xb = x[b].reshape(-1, x.shape[-1]).to(device=acc_device, dtype=torch.float64)
                gb = dy[b].reshape(-1, dy.shape[-1]).to(device=acc_device, dtype=torch.float64).T @ xb
                rows.add_((gb * gb).sum(dim=1))
    finally:
        captured.clear()


def collect_kv_statistics(model: Any, calib: "torch.Tensor", *, grams: bool = True, fisher: bool = True,
                          batch_size: int = 1, progress: bool = True, cache_dir: str | os.PathLike | None = None,
                          device: Any = None) -> KVStatistics:
    """Gram matrices of the K/V projection inputs and Fisher row scores of their weights.

    Parameters
    ----------
    model : transformers causal LM
        Llama, Mistral or Qwen2 style (``model.model.layers[i].self_attn.{k,v}_proj`` as ``nn.Linear``).
        Left as found: parameters' requires_grad flags, every module's train/eval mode and the device are
        restored on return and on error; ``.grad`` fields are never touched.
    calib : torch.LongTensor
        (N, T) token ids, N >= 1, T >= 2, ids < the vocabulary size (see ``calibration_tokens``).
    grams : bool
        Collect ``gram[i]`` (C, C) float64 = X^T X of every k_proj input.
    fisher : bool
        Collect ``fisher_{k,v}_rows[i]`` (O,) float64 from per-sample gradients (one forward and one
        backward per batch; with ``grams`` too, the Grams come from the same forward).
    batch_size : int
        Samples per forward pass (B). Results do not depend on it beyond rounding.
    progress : bool
        Show a tqdm progress bar (on stderr).
    cache_dir : str or os.PathLike, optional
        Directory of the on-disk cache; None reads env ``PALU_C_CACHE_DIR`` (no cache when unset or empty).
    device : str or torch.device, optional
        Where to run; None runs the model where it is. Otherwise the model is moved there for the call and
        moved back afterwards (it must then sit on a single device).

    Returns
    -------
    KVStatistics
        On the CPU; use ``fisher_blocks(layer, group_rows)`` for Palu's block importances.
    """
    import torch

    func = "collect_kv_statistics"
    for name, value in (("grams", grams), ("fisher", fisher), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{func}: {name} must be a bool, got {type(value).__name__}")
    if not (grams or fisher):
        raise ValueError(f"{func}: nothing to collect: pass grams=True and/or fisher=True")
    batch_size = _as_int(batch_size, "batch_size", func)
    if batch_size < 1:
        raise ValueError(f"{func}: batch_size must be >= 1, got {batch_size}")
    projections = _kv_projections(model)
    calib = _validate_calib(calib, _vocab_size(model))
    cache_dir = _check_device_and_cache_dir(device, cache_dir, func)
    path = key = None
    if cache_dir is not None:
        key = _cache_key(model, calib, grams, fisher)
        path = Path(cache_dir) / f"kv_stats-{key}.pt"
        cached = _load_cache(path, key, projections, grams, fisher)
        if cached is not None:
            return cached

    # Accumulators and autograd need normal tensors, also when the caller sits in torch.inference_mode().
    with torch.inference_mode(False):
        stats = _collect(model, projections, calib, grams, fisher, batch_size, progress, device)
    if path is not None:
        stats.cache_key = key
        _save_cache(path, stats)
    return stats


# ---------------------------------------------------------------------------------------------------------
# Statistics of ANY set of linear projections (FLRC: q, k, v, o, gate, up, down of every layer).
#
# Shape legend: N samples, B batch, T tokens, C a projection's input width, O its output width.
#
# - Grams: ``gram[key]`` (C, C) float64 = X^T X over every calibration token, one per INPUT: projections that
#   read the same tensor (q/k/v read the normed hidden state, gate/up the MLP input) share one Gram under one
#   key (``gram_of[name]``), collected by a forward pre-hook on the first module of the key.
# - Fisher: ``fisher_sums[name]`` = sum over the N samples and the O*C weight elements of grad^2, grad the
#   gradient of ONE sample's mean next-token cross-entropy w.r.t. the weight. As for K/V above, the batch's
#   summed loss is back-propagated once to the projection OUTPUTS (never to the weights) and each sample's
#   weight gradient dY_b^T X_b is rebuilt from the hooked input and output gradient. It is formed in float32
#   (float64 for a float64 model) and its squares are summed in float64: the result is a scalar importance
#   for rank allocation, where a relative error of 1e-6 changes nothing, and float32 halves the cost of the
#   T*O*C product that dominates the pass. ``importance(name)`` = sqrt(fisher_sums / (N * O * C)).
#   The same backward also gives the OUTPUT Fisher ``output_fisher[name]`` (O,) float64: per output channel,
#   the sum over samples and tokens of (d loss_sample / d y)^2, the diagonal of the empirical Fisher in the
#   projection's output space. With the input Gram it makes the Kronecker-factored estimate of the loss a
#   weight perturbation dW costs, 1/2 sum_i h_i (dW G dW^T)_ii (``palu_c.weights``, search "fisher").
# - Element Fisher (optional, ``fisher_diag=True``): ``fisher_diag[name]`` (O, C) = the same sum of grad^2 kept
#   per weight element (the diagonal of the empirical Fisher), accumulated in float64 and stored as float32
#   (as large as the weights themselves); it weights truncation errors element by element
#   (``palu_c.weights``, search "fisher_loss").
#
# Cache: one file per part (``linear_stats-gram-<sha256>.pt`` and ``linear_stats-fisher-<sha256>.pt``), keyed
# like the K/V cache (model class, config, every parameter and buffer, calib) plus the projection names,
# shapes and Gram keys; a missing part is computed, a cached one read, so a Fisher search after a uniform
# one reuses the Grams. Each file records the wall time of the pass that computed it (``seconds``), so
# reports can state the search cost even when the statistics come from the cache.
# ---------------------------------------------------------------------------------------------------------

LINEAR_CACHE_FORMAT = "palu_c.linear_statistics"
LINEAR_CACHE_VERSION = 1
# Parts whose content grew after version 1 carry a revision in their cache key, so older files of that part are
# simply not found (and recomputed) while the other parts stay valid: "fisher" gained ``output_fisher``.
_PART_REVISION = {"fisher": "/2"}


@dataclass
class LinearStatistics:
    """Calibration statistics of a set of linear projections (see the comment block above).

    Attributes
    ----------
    gram : dict str -> torch.Tensor, or None
        Gram key -> (C, C) float64 X^T X; None when collected with grams=False.
    gram_of : dict str -> str
        Projection name -> its Gram key.
    n_tokens : int
        Tokens summed into every Gram (0 with grams=False).
    fisher_sums : dict str -> float, or None
        Projection name -> sum over samples and weight elements of grad^2; None with fisher=False.
    n_fisher_samples : int
    shapes : dict str -> (O, C)
    fisher_diag : dict str -> torch.Tensor, or None
        Projection name -> (O, C) float32, per weight element the sum over samples of grad^2 (fisher_diag=True).
    output_fisher : dict str -> torch.Tensor, or None
        Projection name -> (O,) float64, per output channel the sum over samples and tokens of the squared
        output gradient (collected with fisher=True).
    seconds : dict str -> float
        "gram" / "fisher": wall time of the pass that computed that part (when it was computed, also when it
        is now read from the cache; a pass computing both parts gives each the whole pass's time).
    cache_keys : dict str -> str
    """

    gram: dict | None
    gram_of: dict
    n_tokens: int
    fisher_sums: dict | None
    n_fisher_samples: int
    shapes: dict
    seconds: dict
    cache_keys: dict
    fisher_diag: dict | None = None
    output_fisher: dict | None = None

    def importance(self, name: str) -> float:
        """Fisher importance sqrt(mean over samples and weight elements of grad^2) of projection ``name``."""
        if self.fisher_sums is None or self.n_fisher_samples < 1:
            raise ValueError("LinearStatistics.importance: these statistics were collected with fisher=False")
        if name not in self.fisher_sums:
            raise KeyError(f"LinearStatistics.importance: no projection named {name!r}")
        out, inp = self.shapes[name]
        return float((self.fisher_sums[name] / (self.n_fisher_samples * out * inp)) ** 0.5)

    def gram_for(self, name: str) -> "torch.Tensor":
        """The (C, C) float64 Gram of projection ``name``'s input."""
        if self.gram is None:
            raise ValueError("LinearStatistics.gram_for: these statistics were collected with grams=False")
        return self.gram[self.gram_of[name]]


def _check_linear_calib(calib: Any, vocab: int | None, func: str) -> "torch.Tensor":
    import torch

    if not isinstance(calib, torch.Tensor):
        raise TypeError(f"{func}: calib must be a torch.LongTensor (n_samples, seq_len), got {type(calib).__name__}; "
                        f"see palu_c.calibration_tokens")
    if calib.dtype != torch.long:
        raise TypeError(f"{func}: calib must hold int64 token ids, got {calib.dtype}; convert with calib.long()")
    if calib.dim() != 2 or calib.shape[0] < 1 or calib.shape[1] < 2:
        raise ValueError(f"{func}: calib must be (n_samples >= 1, seq_len >= 2), got shape {tuple(calib.shape)}")
    low, high = int(calib.min()), int(calib.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(f"{func}: calib token ids must lie in [0, {vocab}) (the model's vocabulary), "
                         f"got ids in [{low}, {high}]")
    return calib


def _linear_base_hash(model: Any, calib: "torch.Tensor", modules: dict, gram_of: dict) -> "hashlib._Hash":
    h = _model_calib_hash(f"{LINEAR_CACHE_FORMAT}/{LINEAR_CACHE_VERSION}", model, calib)
    for name, mod in modules.items():
        h.update(f"\0proj\0{name}\0{mod.out_features}x{mod.in_features}\0{gram_of[name]}".encode())
    return h


def _load_linear_part(path: Path, key: str, part: str, modules: dict, gram_of: dict, func: str) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if (not isinstance(data, dict) or data.get("format") != LINEAR_CACHE_FORMAT
                or data.get("version") != LINEAR_CACHE_VERSION or data.get("part") != part):
            raise ValueError("not a palu_c linear statistics file of this version")
        if data.get("key") != key:
            raise ValueError("its key does not match its file name")
        if part == "gram":
            grams = data["gram"]
            keys = set(gram_of.values())
            if not isinstance(grams, dict) or set(grams) != keys:
                raise ValueError("its Gram keys do not match")
            for k, g in grams.items():
                c = next(modules[n].in_features for n in modules if gram_of[n] == k)
                if not isinstance(g, torch.Tensor) or g.dtype != torch.float64 or tuple(g.shape) != (c, c) \
                        or not torch.isfinite(g).all():
                    raise ValueError(f"Gram {k!r} has the wrong dtype or shape, or holds NaN/Inf")
        elif part == "fisher_diag":
            diag = data["fisher_diag"]
            if not isinstance(diag, dict) or set(diag) != set(modules):
                raise ValueError("its projection names do not match")
            for name, t in diag.items():
                if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or \
                        tuple(t.shape) != (modules[name].out_features, modules[name].in_features) \
                        or not torch.isfinite(t).all():
                    raise ValueError(f"element Fisher of {name!r} has the wrong dtype or shape, or holds NaN/Inf")
        else:
            sums, out_f = data["fisher_sums"], data["output_fisher"]
            if not isinstance(sums, dict) or set(sums) != set(modules) or not isinstance(out_f, dict) \
                    or set(out_f) != set(modules):
                raise ValueError("its projection names do not match")
            if not all(isinstance(v, float) and v >= 0 and v == v and v != float("inf") for v in sums.values()):
                raise ValueError("a Fisher sum is negative or not finite")
            for name, t in out_f.items():
                if not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or \
                        tuple(t.shape) != (modules[name].out_features,) or not torch.isfinite(t).all() \
                        or bool((t < 0).any()):
                    raise ValueError(f"output Fisher of {name!r} has the wrong dtype or shape, or bad values")
        return data
    except Exception as exc:  # unreadable or inconsistent: recompute
        warnings.warn(f"{func}: ignoring the unreadable cache file {path} ({type(exc).__name__}: {exc}); "
                      f"recomputing", StatisticsCacheWarning, stacklevel=3)
        return None


def _collect_linear(model: Any, modules: dict, gram_of: dict, calib: "torch.Tensor", grams: bool, fisher: bool,
                    batch_size: int, progress: bool, device: Any, diag: bool = False) -> tuple:
    import torch
    from tqdm.auto import tqdm

    with _statistics_run(model, device, "collect_linear_statistics") as (hooks, run_device, acc_device):

        gram_acc = {}
        if grams:
            for name, mod in modules.items():
                key = gram_of[name]
                if key in gram_acc:
                    continue
                gram_acc[key] = torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64, device=acc_device)

                def gram_hook(_module, args, kwargs, key=key):
                    x = args[0] if args else kwargs["input"]
                    x = x.detach().reshape(-1, x.shape[-1]).to(device=acc_device, dtype=torch.float64)
                    gram_acc[key].addmm_(x.T, x)

                hooks.append(mod.register_forward_pre_hook(gram_hook, with_kwargs=True))
        fisher = fisher or diag  # one backward gives both
        sums = {name: 0.0 for name in modules} if fisher else None
        out_acc = {name: torch.zeros(mod.out_features, dtype=torch.float64, device=acc_device)
                   for name, mod in modules.items()} if fisher else None
        diag_acc = {name: torch.zeros(mod.out_features, mod.in_features, dtype=torch.float64, device=acc_device)
                    for name, mod in modules.items()} if diag else None
        captured: dict = {}
        if fisher:
            for name, mod in modules.items():
                def capture(_module, args, kwargs, output, name=name):
                    x = args[0] if args else kwargs["input"]
                    captured[name] = (x.detach(), output)

                hooks.append(mod.register_forward_hook(capture, with_kwargs=True))
            for p in model.parameters():
                p.requires_grad_(False)
            for mod in modules.values():
                mod.weight.requires_grad_(True)  # makes every hooked output part of the autograd graph

        n = calib.shape[0]
        what = " + ".join(w for w, on in (("Fisher", fisher), ("Gram", grams)) if on)
        bar = tqdm(total=n, desc=f"projection statistics ({what})", unit="sample", disable=not progress)
        try:
            for start in range(0, n, batch_size):
                ids = calib[start:start + batch_size].to(run_device).clone()
                if fisher:
                    captured.clear()
                    try:
                        with torch.enable_grad():
                            logits = model(input_ids=ids, use_cache=False).logits
                            loss = _sample_losses(logits, ids).sum()
                            del logits
                            names = [k for k in modules if k in captured]
                            outs = torch.autograd.grad(loss, [captured[k][1] for k in names], allow_unused=True)
                        for name, dy in zip(names, outs):
                            if dy is None:  # does not reach the loss: zero gradient
                                continue
                            x = captured[name][0]
                            out_acc[name].add_(dy.reshape(-1, dy.shape[-1]).to(acc_device, torch.float64)
                                               .square().sum(0))
                            work = torch.float64 if x.dtype == torch.float64 else torch.float32
                            total = 0.0
                            for b in range(ids.shape[0]):
                                xb = x[b].reshape(-1, x.shape[-1]).to(work)
                                gb = dy[b].reshape(-1, dy.shape[-1]).to(work).T @ xb  # (O, C)
                                sq = gb.double().square()
                                total += float(sq.sum())
                                if diag_acc is not None:
                                    diag_acc[name].add_(sq.to(acc_device))
                            sums[name] += total
                    finally:
                        captured.clear()
                else:
                    with torch.no_grad():
                        model(input_ids=ids, use_cache=False)
                bar.update(ids.shape[0])
        finally:
            bar.close()
        return (({k: g.cpu() for k, g in gram_acc.items()} if grams else None), sums,
                ({k: d.float().cpu() for k, d in diag_acc.items()} if diag else None),
                ({k: o.cpu() for k, o in out_acc.items()} if fisher else None))


def collect_linear_statistics(model: Any, calib: "torch.Tensor", modules: Any, *, gram_of: Any = None,
                              grams: bool = True, fisher: bool = True, batch_size: int = 1, progress: bool = True,
                              cache_dir: str | os.PathLike | None = None, device: Any = None,
                              fisher_diag: bool = False) -> LinearStatistics:
    """Input Grams and Fisher importances of a set of ``nn.Linear`` projections of a causal LM.

    Parameters
    ----------
    model : transformers causal LM (anything returning ``.logits`` (B, T, V) from ``model(input_ids=...)``)
        Left as found (requires_grad flags, train/eval modes, device), also on error.
    calib : torch.LongTensor (N, T)
        Calibration token ids, N >= 1, T >= 2.
    modules : dict str -> nn.Linear
        The projections, by name (e.g. module paths); insertion order is kept.
    gram_of : dict str -> str, optional
        Gram key of each projection; projections with the same key must receive the same input tensor in
        every forward (their Gram is collected once). Default: every projection its own key (its name).
    grams, fisher : bool
        Which parts to collect (at least one).
    batch_size : int
        Samples per forward pass; results do not depend on it beyond rounding.
    progress : bool
        tqdm progress bar.
    cache_dir : str or os.PathLike, optional
        On-disk cache (None reads env ``PALU_C_CACHE_DIR``; no cache when unset).
    device : optional
        Run there (the model is moved for the call and back); None: where it is.
    fisher_diag : bool
        Also keep the element Fisher (O, C) of every projection (memory and cache file as large as the
        projections' weights in float32).

    Returns
    -------
    LinearStatistics
        On the CPU.
    """
    import time

    import torch
    from torch import nn

    func = "collect_linear_statistics"
    for name, value in (("grams", grams), ("fisher", fisher), ("progress", progress), ("fisher_diag", fisher_diag)):
        if not isinstance(value, bool):
            raise TypeError(f"{func}: {name} must be a bool, got {type(value).__name__}")
    if not (grams or fisher or fisher_diag):
        raise ValueError(f"{func}: nothing to collect: pass grams=True and/or fisher=True")
    batch_size = _as_int(batch_size, "batch_size", func)
    if batch_size < 1:
        raise ValueError(f"{func}: batch_size must be >= 1, got {batch_size}")
    if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"{func}: model must be a transformers causal LM (nn.Module), got {type(model).__name__}")
    if not isinstance(modules, dict) or not modules:
        raise TypeError(f"{func}: modules must be a non-empty dict name -> nn.Linear")
    for name, mod in modules.items():
        if not isinstance(name, str) or not isinstance(mod, nn.Linear):
            raise TypeError(f"{func}: modules[{name!r}] must be an nn.Linear under a str name, got "
                            f"{type(mod).__name__}")
    gram_of = {name: name for name in modules} if gram_of is None else dict(gram_of)
    if set(gram_of) != set(modules) or not all(isinstance(k, str) for k in gram_of.values()):
        raise ValueError(f"{func}: gram_of must map every projection name to a str Gram key")
    widths: dict = {}
    for name, mod in modules.items():
        if widths.setdefault(gram_of[name], mod.in_features) != mod.in_features:
            raise ValueError(f"{func}: projections sharing Gram key {gram_of[name]!r} read inputs of different widths")
    calib = _check_linear_calib(calib, _vocab_size(model), func)
    cache_dir = _check_device_and_cache_dir(device, cache_dir, func)

    parts = [p for p, on in (("gram", grams), ("fisher", fisher), ("fisher_diag", fisher_diag)) if on]
    keys: dict = {}
    loaded: dict = {}
    if cache_dir is not None:
        base = _linear_base_hash(model, calib, modules, gram_of)
        for part in parts:
            h = base.copy()
            h.update(f"\0part={part}{_PART_REVISION.get(part, '')}".encode())
            keys[part] = h.hexdigest()
            path = Path(cache_dir) / f"linear_stats-{part}-{keys[part]}.pt"
            data = _load_linear_part(path, keys[part], part, modules, gram_of, func)
            if data is not None:
                loaded[part] = data
    missing = [p for p in parts if p not in loaded]
    seconds = {p: float(loaded[p].get("seconds", float("nan"))) for p in loaded}
    gram = loaded["gram"]["gram"] if "gram" in loaded else None
    sums = loaded["fisher"]["fisher_sums"] if "fisher" in loaded else None
    out_f = loaded["fisher"]["output_fisher"] if "fisher" in loaded else None
    diag = loaded["fisher_diag"]["fisher_diag"] if "fisher_diag" in loaded else None
    if missing:
        t0 = time.perf_counter()
        with torch.inference_mode(False):
            new_gram, new_sums, new_diag, new_out = _collect_linear(model, modules, gram_of, calib, "gram" in missing,
                                                           "fisher" in missing, batch_size, progress, device,
                                                           diag="fisher_diag" in missing)
        elapsed = time.perf_counter() - t0
        for part in missing:
            seconds[part] = elapsed
        gram = new_gram if "gram" in missing else gram
        sums = new_sums if "fisher" in missing else sums
        out_f = new_out if "fisher" in missing else out_f
        diag = new_diag if "fisher_diag" in missing else diag
        if cache_dir is not None:
            payload = {"gram": ("gram", gram), "fisher": ("fisher_sums", sums), "fisher_diag": ("fisher_diag", diag)}
            for part in missing:
                data = {"format": LINEAR_CACHE_FORMAT, "version": LINEAR_CACHE_VERSION, "part": part,
                        "key": keys[part], "seconds": elapsed, "n_samples": int(calib.shape[0]),
                        "n_tokens": int(calib.numel())}
                field_name, value = payload[part]
                data[field_name] = value
                if part == "fisher":
                    data["output_fisher"] = out_f
                _save_cache_file(Path(cache_dir) / f"linear_stats-{part}-{keys[part]}.pt", data, ".linear_stats-",
                                 func, stacklevel=3)
    return LinearStatistics(
        gram=gram, gram_of=gram_of, n_tokens=int(calib.numel()) if grams else 0,
        fisher_sums=sums if fisher else None, n_fisher_samples=int(calib.shape[0]) if (fisher or fisher_diag) else 0,
        fisher_diag=diag, output_fisher=out_f if fisher else None,
        shapes={name: (mod.out_features, mod.in_features) for name, mod in modules.items()},
        seconds=seconds, cache_keys=keys)


__all__ = ["KVStatistics", "StatisticsCacheWarning", "collect_kv_statistics", "SUPPORTED_FAMILIES",
           "LinearStatistics", "collect_linear_statistics"]
