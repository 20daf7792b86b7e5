"""Declarative descriptions of model families.

An ``ArchSpec`` says where things live inside a transformers model, as dotted
paths.  Paths inside a layer are relative to that layer.  Nothing here holds
a model; ``compress.arch.adapter.Adapter`` binds a spec to one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of one model family are.

    ``layers`` and ``embed`` are tried under each of ``prefixes`` in order, so
    one spec serves both the bare backbone (``LlamaModel``) and the model with
    a head (``LlamaForCausalLM``, whose backbone sits under ``model.``).

    Attention: ``q``, ``k``, ``v`` produce heads (their output rows are pruned
    per head); ``o`` consumes them (its input columns are pruned).  MLP:
    ``mlp_in`` produce the intermediate channels (rows), ``mlp_out`` consumes
    them (columns).  A gated MLP has two ``mlp_in`` (gate, up); BERT has one.
    """

    family: str
    model_types: tuple[str, ...]
    causal: bool
    prefixes: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str | None
    lm_head: str | None
    q: str
    k: str
    v: str
    o: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    norms: tuple[str, ...]
    # Per-head norms applied inside attention (Qwen3, Gemma3): their weight has
    # head_dim entries and is shared by all heads, so head pruning keeps them.
    head_norms: tuple[str, ...] = ()
    # Attribute names on the attention module that forward reads for head
    # counts; pruning rewrites these per layer.
    attn_module: str = ""
    attn_head_attrs: tuple[str, ...] = ()
    # The pre-norms whose output is all that q/k/v (``attn_norm``) and the MLP inputs (``mlp_norm``) read, so an
    # input scale can be folded into their weight (``quantization.scaling``); None where a norm follows instead
    # (BERT).  ``norm_offset``: added to the weight in the norm's forward (Gemma: x * (1 + w)).
    attn_norm: str | None = None
    mlp_norm: str | None = None
    norm_offset: float = 0.0


LLAMA_STYLE = ArchSpec(
    family="llama-style",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    causal=True,
    prefixes=("model.", ""),
    layers="layers",
    embed="embed_tokens",
    final_norm="norm",
    lm_head="lm_head",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    norms=("input_layernorm", "post_attention_layernorm"),
    head_norms=("self_attn.q_norm", "self_attn.k_norm"),
    attn_module="self_attn",
    attn_head_attrs=("num_key_value_groups",),
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
)

# Gemma3 is laid out like Llama but has four norms per layer, and the
# multimodal model nests the text backbone under language_model.
GEMMA3 = replace(
    LLAMA_STYLE,
    family="gemma3",
    model_types=("gemma3_text", "gemma3"),
    prefixes=("model.language_model.", "model.", "language_model.", ""),
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    mlp_norm="pre_feedforward_layernorm",
    norm_offset=1.0,
)

BERT = ArchSpec(
    family="bert",
    model_types=("bert",),
    causal=False,
    prefixes=("bert.", ""),
    layers="encoder.layer",
    embed="embeddings.word_embeddings",
    final_norm=None,
    lm_head="cls.predictions.decoder",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    mlp_in=("intermediate.dense",),
    mlp_out="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    attn_module="attention.self",
    attn_head_attrs=("num_attention_heads", "all_head_size"),
)

SPECS: tuple[ArchSpec, ...] = (LLAMA_STYLE, GEMMA3, BERT)
