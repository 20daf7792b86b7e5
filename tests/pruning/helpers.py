"""Tiny models with real GQA (several kv heads, n_rep > 1) and checks shared by the pruning tests."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, BertForMaskedLM, BertModel

from tests.tiny import tiny_config

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "bert", "bert-mlm")


def gqa_model(
    family: str = "llama", layers: int = 4, heads: int = 6, kv: int = 3, inter: int = 256, seed: int = 0, **overrides
):
    """A random model of ``family`` with ``layers`` layers and ``heads``/``kv`` heads of 16 dims.

    BERT derives head_dim from hidden_size, so it keeps 4 heads of 16 (n_rep 1).
    """
    base = tiny_config(family)
    d = base.to_dict()
    d.pop("layer_types", None)  # derived from num_hidden_layers; let the config rebuild it
    d.update(num_hidden_layers=layers, intermediate_size=inter)
    if not family.startswith("bert"):
        # hidden = heads * head_dim keeps the configs' own validation happy.
        d.update(num_attention_heads=heads, num_key_value_heads=kv, hidden_size=heads * 16)
    d.update(overrides)
    cfg = type(base)(**d)
    torch.manual_seed(seed)
    if family == "bert":
        model = BertModel(cfg)
    elif family == "bert-mlm":
        model = BertForMaskedLM(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    return model.float().eval()


def calib(n: int = 8, seq_len: int = 24, seed: int = 1) -> torch.Tensor:
    """Random token ids inside the tiny vocabulary (3.. avoid pad/bos/eos)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (n, seq_len), generator=g)


FAST = dict(calib_samples=4, calib_seq_len=16, batch_size=4, progress=False)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 64]])


def assert_generates_with_cache(model) -> None:
    """Greedy generation with the KV cache equals generation without it."""
    prompt = IDS[:, :4]
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kw)
    without = model.generate(prompt, use_cache=False, **kw)
    assert with_cache.shape == (1, 10)
    assert torch.equal(with_cache, without)
