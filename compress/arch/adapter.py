"""Bind an ``ArchSpec`` to a model instance and answer questions about it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from compress.arch.spec import SPECS, ArchSpec
from compress.errors import CompressError
from compress.packed import is_packed


class UnsupportedModelError(CompressError):
    """The model's family has no adapter."""


# What each attention attribute named in ArchSpec.attn_head_attrs holds, from
# (query heads, kv heads, head_dim): transformers' names, shared by families.
HEAD_ATTRS: dict[str, Callable[[int, int, int], int]] = {
    "num_key_value_groups": lambda h, kv, hd: h // kv,
    "num_attention_heads": lambda h, kv, hd: h,
    "num_heads": lambda h, kv, hd: h,
    "num_key_value_heads": lambda h, kv, hd: kv,
    "num_kv_heads": lambda h, kv, hd: kv,
    "all_head_size": lambda h, kv, hd: h * hd,
}


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
    except (AttributeError, IndexError, TypeError):
        return False
    return True


def supported_families() -> str:
    """One line naming every family and the ``model_type`` values it covers."""
    return "; ".join(f"{s.family} ({', '.join(s.model_types)})" for s in SPECS)


@dataclass
class LayerParts:
    """The modules of one decoder (or encoder) layer, resolved."""

    index: int
    name: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp_in: list[nn.Linear]
    mlp_out: nn.Linear
    norms: list[nn.Module]
    head_dim: int

    @property
    def num_heads(self) -> int:
        return self.q.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.k.out_features // self.head_dim

    @property
    def mlp_width(self) -> int:
        return self.mlp_out.in_features


class Adapter:
    """One model seen through its family's ``ArchSpec``.

    Head counts are read from the projection shapes, not from the config, so
    they stay right after a layer's heads have been pruned.
    """

    def __init__(self, spec: ArchSpec, model: nn.Module, prefix: str):
        self.spec = spec
        self.model = model
        self.prefix = prefix
        self.text_config = model.config.get_text_config()

    # -- whole-model parts -------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.model, self.prefix + self.spec.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def embed(self) -> nn.Embedding:
        return _get(self.model, self.prefix + self.spec.embed)

    @property
    def lm_head(self) -> nn.Linear | None:
        if self.spec.lm_head and _has(self.model, self.spec.lm_head):
            return _get(self.model, self.spec.lm_head)
        return None

    @property
    def final_norm(self) -> nn.Module | None:
        if self.spec.final_norm is None:
            return None
        return _get(self.model, self.prefix + self.spec.final_norm)

    @property
    def head_dim(self) -> int:
        cfg = self.text_config
        explicit = getattr(cfg, "head_dim", None)
        return int(explicit) if explicit else cfg.hidden_size // cfg.num_attention_heads

    @property
    def hidden_size(self) -> int:
        return self.embed.embedding_dim

    @property
    def tied_embeddings(self) -> bool:
        head = self.lm_head
        if head is None:
            return False
        if is_packed(head, "tied_head"):  # a quantised tied head reads the embedding's packed data
            return head.table is self.embed
        if is_packed(head, "embedding") or is_packed(self.embed, "embedding"):  # quantised apart (.weight is a fresh tensor)
            return False
        return head.weight is self.embed.weight

    # -- per layer ---------------------------------------------------------
    def layer_name(self, i: int) -> str:
        return f"{self.prefix}{self.spec.layers}.{i}"

    def layer(self, i: int) -> LayerParts:
        s = self.spec
        mod = self.layers[i]
        return LayerParts(
            index=i,
            name=self.layer_name(i),
            module=mod,
            q=_get(mod, s.q),
            k=_get(mod, s.k),
            v=_get(mod, s.v),
            o=_get(mod, s.o),
            mlp_in=[_get(mod, p) for p in s.mlp_in],
            mlp_out=_get(mod, s.mlp_out),
            norms=[_get(mod, p) for p in s.norms],
            head_dim=self.head_dim,
        )

    def attention_module(self, i: int) -> nn.Module:
        return _get(self.layers[i], self.spec.attn_module)

    def set_attention_heads(self, i: int, heads: int, kv_heads: int) -> None:
        """Rewrite the head-count attributes that layer ``i``'s attention forward reads."""
        attention = self.attention_module(i)
        for name in self.spec.attn_head_attrs:
            if hasattr(attention, name):
                setattr(attention, name, HEAD_ATTRS[name](heads, kv_heads, self.head_dim))

    def resize_layer(self, i: int, heads: int, kv_heads: int, mlp_width: int, device: Any = "meta") -> None:
        """Give layer ``i`` empty projections of the given widths (to load a pruned checkpoint into).

        Only projections whose shape changes are replaced; the new ones are
        uninitialised (on ``device``, meta by default) and keep bias and dtype.
        """
        s, hd, hidden = self.spec, self.head_dim, self.hidden_size
        shapes = {s.q: (hidden, heads * hd), s.k: (hidden, kv_heads * hd), s.v: (hidden, kv_heads * hd),
                  s.o: (heads * hd, hidden), s.mlp_out: (mlp_width, hidden)}
        shapes.update({p: (hidden, mlp_width) for p in s.mlp_in})
        layer = self.layers[i]
        for path, (n_in, n_out) in shapes.items():
            old = _get(layer, path)
            if (old.in_features, old.out_features) != (n_in, n_out):
                new = nn.Linear(n_in, n_out, bias=old.bias is not None, device=device, dtype=old.weight.dtype)
                layer.set_submodule(path, new)
        self.set_attention_heads(i, heads, kv_heads)

    def projection_names(self) -> list[str]:
        """Full names of every projection inside the layers, in layer order."""
        s = self.spec
        rel = (s.q, s.k, s.v, s.o, *s.mlp_in, s.mlp_out)
        return [f"{self.layer_name(i)}.{p}" for i in range(self.num_layers) for p in rel]

    def embedding_param_names(self) -> set[str]:
        """Names of parameters that are embeddings or the (tied or not) lm_head."""
        ids = {id(self.embed.weight)}
        if self.lm_head is not None:
            ids.add(id(self.lm_head.weight))
        return {n for n, p in self.model.named_parameters(remove_duplicate=False) if id(p) in ids}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: family, widths per layer, tied embeddings."""
        parts = [self.layer(i) for i in range(self.num_layers)]
        return {
            "family": self.spec.family,
            "model_type": self.text_config.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "num_heads": [p.num_heads for p in parts],
            "num_kv_heads": [p.num_kv_heads for p in parts],
            "mlp_width": [p.mlp_width for p in parts],
            "tied_embeddings": self.tied_embeddings,
            "vocab_size": self.embed.num_embeddings,
        }


def adapter_for(model: nn.Module) -> Adapter:
    """Return the adapter of ``model``'s family.

    Raises ``UnsupportedModelError`` with one sentence naming the model class
    and the supported families when there is none.
    """
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise UnsupportedModelError(
            f"{cls} is not a transformers model (it has no config); compress-lm supports "
            f"these families: {supported_families()}."
        )
    model_type = config.get_text_config().model_type
    for spec in SPECS:
        if model_type in spec.model_types or config.model_type in spec.model_types:
            for prefix in spec.prefixes:
                if _has(model, prefix + spec.layers):
                    return Adapter(spec, model, prefix)
            raise UnsupportedModelError(
                f"{cls} has model_type '{model_type}' ({spec.family} family) but no "
                f"'{spec.layers}' under any of {list(spec.prefixes)}; it is laid out unlike "
                f"the stock transformers class, so compress-lm cannot find its layers."
            )
    raise UnsupportedModelError(
        f"{cls} (model_type '{model_type}') is not supported; compress-lm supports these "
        f"families: {supported_families()}."
    )


def is_causal_lm(model: nn.Module) -> bool:
    """True for decoder LMs; False for encoders (BERT).  Unknown families count as causal."""
    try:
        return adapter_for(model).spec.causal
    except UnsupportedModelError:
        return True
