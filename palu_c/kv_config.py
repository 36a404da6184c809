"""Configuration records of a Palu-compressed model (what `compress_kv` decided, what `save` writes).

Shapes follow docs/design/latent_cache.md: per layer, NG = kv_heads / group_size head groups, each with a key
rank and a value rank (multiples of `rank_multiple`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LATENT_CACHE_VERSION = 1
FORMAT_VERSION = 1


@dataclass
class PaluLayerConfig:
    """One decoder layer: the group size and the per-group ranks of its key and value latents."""

    layer_idx: int
    group_size: int  # KV heads per group (G)
    k_ranks: list[int]  # one per group, len = kv_heads / group_size
    v_ranks: list[int]

    @property
    def k_rank(self) -> int:
        return int(sum(self.k_ranks))

    @property
    def v_rank(self) -> int:
        return int(sum(self.v_ranks))


@dataclass
class PaluConfig:
    """Model-wide Palu settings plus every layer's ranks (attached to the model as ``model.palu_config``)."""

    ratio: float
    group_size: int
    search: str
    rank_multiple: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    bits: int | None = None  # latent quantization bits (None: latents kept in the model dtype)
    hadamard: bool = True
    residual: int = 128
    quant_group: int | None = None  # channels per scale inside a head group's latent (None: whole group)
    key_basis: str = "svd"  # "interpolative": half the key coordinates stored as the latent (palu_c.key_basis)
    layers: list[PaluLayerConfig] = field(default_factory=list)
    latent_cache_version: int = LATENT_CACHE_VERSION

    def layer(self, idx: int) -> PaluLayerConfig:
        for layer in self.layers:
            if layer.layer_idx == idx:
                return layer
        raise KeyError(f"layer {idx} is not Palu-compressed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PaluConfig":
        data = dict(data)
        layers = [PaluLayerConfig(**layer) for layer in data.pop("layers", [])]
        return cls(**data, layers=layers)
