"""Tiny random-config models of every supported family, and a tiny tokenizer.

They build in well under a second on the CPU, so tests can make fresh ones.
"""
from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 320
SAMPLE_TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date. "
    "Sometime too hot the eye of heaven shines, and often is his gold complexion dimm'd; "
    "and every fair from fair sometime declines, by chance or nature's changing course untrimm'd."
)

_DECODER_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

CAUSAL_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
ALL_FAMILIES = CAUSAL_FAMILIES + ("bert-mlm", "bert")


def tiny_config(family: str):
    if family == "llama":
        return LlamaConfig(**_DECODER_COMMON)
    if family == "mistral":
        return MistralConfig(**{**_DECODER_COMMON, "tie_word_embeddings": False}, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**_DECODER_COMMON)
    if family == "qwen3":
        return Qwen3Config(**_DECODER_COMMON)
    if family == "gemma3":
        return Gemma3TextConfig(**_DECODER_COMMON, sliding_window=32, query_pre_attn_scalar=16)
    if family in ("bert", "bert-mlm"):
        return BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            pad_token_id=0,
        )
    raise KeyError(family)


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_config(family)
    if family == "bert":
        model = BertModel(config)
    elif family == "bert-mlm":
        model = BertForMaskedLM(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with fewer than VOCAB entries, trained on SAMPLE_TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=["<pad>", "<s>", "</s>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>"
    )


def as_stored(model, dtype=torch.bfloat16):
    """A copy of ``model`` with its stored float tensors rounded to ``dtype``, as a checkpoint saved in it reloads."""
    import copy

    from compress.io.storage import round_model_

    return round_model_(copy.deepcopy(model), dtype)
