"""A modeling file shipped inside checkpoints whose layers have different widths.

Stock transformers 5.x builds every layer from the config's global widths, so
a model pruned to per-layer widths cannot load with ``from_pretrained``
alone.  ``save`` writes ``modeling_compress.py`` beside ``config.json`` and
names it in ``auto_map``: ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` then builds the stock class and resizes each layer
before the weights load.  The file needs only torch and transformers, not
compress-lm.  It is one template for every family; the family's layout comes
from its ``ArchSpec`` as data.
"""
from __future__ import annotations

import json
from typing import Any

from compress.arch import HEAD_ATTRS, Adapter
from compress.errors import CompressError

MODULE = "modeling_compress"
CLASS = "CompressResizedModel"
WIDTHS_KEY = "compress_layer_widths"

_TEMPLATE = '''"""Written by compress-lm: loads a model whose layers have different widths.

Builds the stock transformers class from config.json, then gives each layer the
attention heads and MLP width listed in config.compress_layer_widths before the
weights load.  Needs only torch and transformers.
"""
import transformers
from torch import nn

LAYOUT = __LAYOUT__
_Base = getattr(transformers, LAYOUT["base_class"])


def _get(root, path):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _resize(model, config):
    widths = getattr(config, "compress_layer_widths", None)
    if not widths:
        return
    layers = _get(model, LAYOUT["layers"])
    hidden, hd = LAYOUT["hidden_size"], LAYOUT["head_dim"]
    for i, layer in enumerate(layers):
        heads = widths["num_attention_heads"][i]
        kv = widths["num_key_value_heads"][i]
        mlp = widths["intermediate_size"][i]
        shapes = {LAYOUT["q"]: (hidden, heads * hd), LAYOUT["k"]: (hidden, kv * hd),
                  LAYOUT["v"]: (hidden, kv * hd), LAYOUT["o"]: (heads * hd, hidden),
                  LAYOUT["mlp_out"]: (mlp, hidden)}
        shapes.update({p: (hidden, mlp) for p in LAYOUT["mlp_in"]})
        for path, (n_in, n_out) in shapes.items():
            old = _get(layer, path)
            if (old.in_features, old.out_features) != (n_in, n_out):
                new = nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
                layer.set_submodule(path, new)
        attention = _get(layer, LAYOUT["attn_module"])
        counts = {"heads": heads, "kv": kv, "hd": hd}
        for name, formula in LAYOUT["head_attrs"].items():
            if hasattr(attention, name):
                setattr(attention, name, eval(formula, {}, counts))


class __CLASS__(_Base):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        _resize(self, config)
'''

# The same arithmetic as compress.arch.HEAD_ATTRS, as expressions the shipped
# file evaluates without importing compress.
_HEAD_ATTR_FORMULAS = {
    "num_key_value_groups": "heads // kv",
    "num_attention_heads": "heads",
    "num_heads": "heads",
    "num_key_value_heads": "kv",
    "num_kv_heads": "kv",
    "all_head_size": "heads * hd",
}
assert set(_HEAD_ATTR_FORMULAS) == set(HEAD_ATTRS)


def layer_widths(adapter: Adapter) -> dict[str, list[int]]:
    d = adapter.describe()
    return {"num_attention_heads": d["num_heads"], "num_key_value_heads": d["num_kv_heads"], "intermediate_size": d["mlp_width"]}


def is_uniform(widths: dict[str, list[int]]) -> bool:
    return all(len(set(v)) <= 1 for v in widths.values())


def modeling_file(adapter: Adapter, base_class: str) -> str:
    """The source of ``modeling_compress.py`` for this model."""
    s = adapter.spec
    layout: dict[str, Any] = {
        "base_class": base_class,
        "layers": adapter.prefix + s.layers,
        "hidden_size": adapter.hidden_size,
        "head_dim": adapter.head_dim,
        "q": s.q, "k": s.k, "v": s.v, "o": s.o,
        "mlp_in": list(s.mlp_in), "mlp_out": s.mlp_out,
        "attn_module": s.attn_module,
        "head_attrs": {a: _HEAD_ATTR_FORMULAS[a] for a in s.attn_head_attrs},
    }
    return _TEMPLATE.replace("__LAYOUT__", json.dumps(layout, indent=4)).replace("__CLASS__", CLASS)


def auto_map_key(model: Any) -> str:
    """The Auto class that ``from_pretrained`` users call for this model."""
    name = type(model).__name__
    for suffix, auto in (("ForCausalLM", "AutoModelForCausalLM"), ("ForMaskedLM", "AutoModelForMaskedLM")):
        if name.endswith(suffix):
            return auto
    return "AutoModel"


def refusal(directory: Any, label: str) -> CompressError | None:
    """The one-sentence refusal when building ``directory``'s model would need code shipped in it, else None.

    A config of a model type transformers knows is built from transformers'
    own classes whatever its ``auto_map`` says (our ``modeling_compress.py``
    is named there, for plain-transformers users), so only an unknown type
    that points at shipped code is refused here; transformers' own refusal
    (``trust_remote_code=False``) covers tokenizers, see ``is_remote_code_error``.
    """
    from pathlib import Path

    from transformers import CONFIG_MAPPING

    try:
        data = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    from compress.io.stock_loaders import is_ours

    if is_ours(data):  # our own packed checkpoint: compress-lm reads its config itself and never runs the module
        return None
    if isinstance(data, dict) and isinstance(data.get("auto_map"), dict) and data.get("model_type") not in CONFIG_MAPPING:
        return remote_code_refused(label, f"config.json names model_type {str(data.get('model_type'))[:40]!r}, which "
                                          f"transformers does not know, and code in the directory (auto_map)")
    return None


def is_remote_code_error(err: BaseException) -> bool:
    """transformers' refusal to run shipped code without ``trust_remote_code=True``."""
    return "trust_remote_code" in str(err)


def remote_code_refused(label: str, why: str) -> CompressError:
    return CompressError(
        f"'{label}' asks to run code shipped with it ({why}); compress-lm never runs such code unless you opt in, so "
        f"read that code first and then load it with compress.load_model(..., trust_remote_code=True)."
    )
