"""Configuration records of an FLRC weight-compressed model (what `compress_weights` decided, what `save` writes).

Shapes: a projection is an ``nn.Linear`` weight (out, in) = (m, n). A low-rank projection stores ``down``
(R, in) and ``up`` (out, R) with R its stored rank; a dense one keeps its (out, in) weight. Parameter counts
are weight elements only: biases are kept exact beside the factors and are the same before and after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Bumped on any change of the saved layout of FLRC models (palu_c.io writes it beside the Palu format version).
FLRC_FORMAT_VERSION = 1

# The seven projection classes of a Llama-style decoder layer, in the order they are listed everywhere.
PROJECTION_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class FLRCProjectionConfig:
    """One targeted projection: where it is, its shape, and what was decided for it."""

    name: str  # module path from the model root, e.g. "model.layers.3.mlp.down_proj"
    kind: str  # one of PROJECTION_KINDS
    layer_idx: int
    out_features: int  # m
    in_features: int  # n
    rank: int | None  # stored rank R (a multiple of rank_multiple), None: kept dense
    importance: float | None = None  # Fisher importance sqrt(mean grad^2) (None when not computed)

    @property
    def dense_parameters(self) -> int:
        return self.out_features * self.in_features

    @property
    def stored_parameters(self) -> int:
        """m * n when dense, R * (m + n) when low rank."""
        if self.rank is None:
            return self.dense_parameters
        return self.rank * (self.out_features + self.in_features)


@dataclass
class FLRCConfig:
    """Model-wide FLRC settings plus every targeted projection (attached as ``model.flrc_config``).

    ``progressive`` is the normalized schedule: projection class -> list of ``[tokens_generated_from,
    keep_fraction]`` steps (classes without a schedule are absent), or None when progressive decoding is off.
    ``skipped`` lists the projections left alone because ``compress_kv`` owns them.
    """

    ratio: float
    search: str
    rank_multiple: int
    min_rank: int
    targets: list[str]
    projections: list[FLRCProjectionConfig] = field(default_factory=list)
    progressive: dict[str, list[list[float]]] | None = None
    skipped: list[str] = field(default_factory=list)
    budget: float = 0.0  # ratio * targeted dense parameters
    format_version: int = FLRC_FORMAT_VERSION

    @property
    def targeted_parameters(self) -> int:
        return sum(p.dense_parameters for p in self.projections)

    @property
    def stored_parameters(self) -> int:
        return sum(p.stored_parameters for p in self.projections)

    def projection(self, name: str) -> FLRCProjectionConfig:
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(f"{name!r} is not a targeted projection of this FLRC model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FLRCConfig":
        data = dict(data)
        projections = [FLRCProjectionConfig(**p) for p in data.pop("projections", [])]
        version = data.get("format_version", FLRC_FORMAT_VERSION)
        if version != FLRC_FORMAT_VERSION:
            raise ValueError(f"FLRC config format version {version} is not supported (this palu_c reads "
                             f"{FLRC_FORMAT_VERSION}); upgrade palu_c")
        return cls(**data, projections=projections)
