"""Pruning a real model: SmolLM2-135M (Llama, 30 layers, GQA 9/3, tied embeddings)."""
import math

import pytest
import torch

from compress.arch import adapter_for
from compress.data import TextConfig, load_text
from compress.errors import CompressError
from compress.eval import EvalConfig, evaluate
from compress.models import load_model
from compress.pruning import prune


@pytest.mark.slow
def test_smollm2_prunes_a_fifth_and_still_runs():
    try:
        model, tokenizer = load_model("smollm2-135m")
    except CompressError as err:
        pytest.skip(f"SmolLM2-135M is not available here: {err}")
    splits = load_text(None, tokenizer, TextConfig(seq_len=64, max_tokens=30_000))
    report = prune(
        model, 0.2, data=splits, importance="activation",
        calib_samples=8, calib_seq_len=32, batch_size=8, step=0.1, progress=False,
    )
    assert 0.2 <= report.achieved_sparsity < 0.205
    a = adapter_for(model)
    assert a.tied_embeddings
    for i in range(a.num_layers):
        p = a.layer(i)
        assert p.mlp_width % 8 == 0 and p.num_kv_heads >= 1 and p.num_heads == 3 * p.num_kv_heads
    assert model.config.compress_layer_widths["intermediate_size"] == [r.mlp[1] for r in report.layers]
    ev = evaluate(model, splits.eval[:4], config=EvalConfig(max_sequences=4, progress=False))
    assert math.isfinite(ev.model.perplexity)
    prompt = splits.eval[:1, :8]
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(model.generate(prompt, use_cache=True, **kw), model.generate(prompt, use_cache=False, **kw))
