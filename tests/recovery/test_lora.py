import pytest
import torch

from compress.quantization import QuantLinear, prepare_qat, quantize
from compress.recovery import LoRALinear, RecoverConfig, RecoverError, add_lora, merge_lora, recover
from tests.recovery.helpers import all_equal, damaged_copy, params, sharp_teacher, token_data


def _give_adapters_values(model):
    with torch.no_grad():  # B starts at zero (a no-op adapter); give it a value to merge
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)


def test_default_targets_are_the_layer_projections_and_everything_else_freezes():
    model = sharp_teacher()
    names = add_lora(model, rank=4, alpha=8)
    assert len(names) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 28


def test_only_adapters_change_during_lora_recovery():
    teacher = sharp_teacher()
    student = damaged_copy(teacher)
    before = params(student)
    ids = token_data(24, 16)
    report = recover(student, teacher, ids[:16], RecoverConfig(steps=4, batch_size=4, lr=1e-3, lora_rank=4,
                     lora_targets=("q_proj", "v_proj"), merge_lora=False, eval_every=0, progress=False),
                     eval_data=ids[16:])
    assert report.lora_modules == 4 and not report.lora_merged
    after = params(student)
    adapters = {n: t for n, t in after.items() if "lora_" in n}
    assert len(adapters) == 8 and any(t.abs().sum() > 0 for n, t in adapters.items() if n.endswith("lora_B"))
    base_after = {n.replace(".base.", "."): t for n, t in after.items() if "lora_" not in n}
    assert all_equal(base_after, before)  # every original weight is bit-for-bit untouched


def test_merge_gives_the_same_outputs_as_the_adapters():
    model = sharp_teacher()
    add_lora(model, rank=4, alpha=8, dropout=0.1)
    _give_adapters_values(model)
    model.eval()
    ids = token_data(3, 12)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        assert merge_lora(model) == 14
        merged = model(input_ids=ids).logits
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, sharp_teacher()(input_ids=ids).logits, atol=1e-3)  # the update is in


def test_lora_on_a_packed_module_is_refused():
    model = sharp_teacher()
    quantize(model, "ternary")
    with pytest.raises(RecoverError, match=r"LoRA cannot go on packed QuantLinear modules \(model.layers.0.self_attn.q_proj.*merge, then quantise"):
        add_lora(model, rank=4)
    with pytest.raises(RecoverError, match="LoRA cannot go on packed QuantLinear modules"):
        LoRALinear(next(m for m in model.modules() if isinstance(m, QuantLinear)), 4, 8)
    with pytest.raises(RecoverError, match="LoRA cannot go on packed QuantLinear modules"):
        recover(model, None, token_data(8, 8), RecoverConfig(steps=2, lora_rank=4, progress=False))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # refused before anything changed
    assert all(p.requires_grad for p in model.parameters())


def test_lora_targets_that_match_nothing_are_refused():
    with pytest.raises(RecoverError, match=r"lora_targets \['attn_out'\] matched no linear module"):
        add_lora(sharp_teacher(), rank=2, targets=("attn_out",))


def test_lora_on_qat_model_merges_then_converts_with_identical_outputs():
    model = sharp_teacher()
    prepare_qat(model, "ternary", qat_lambda=1.0)
    add_lora(model, rank=4, alpha=8)
    _give_adapters_values(model)
    ids = token_data(2, 12)
    with torch.no_grad():
        with_adapters = model(input_ids=ids).logits
        merge_lora(model)
        quantize(model)  # converts the fake-quantised modules as trained
        packed = model(input_ids=ids).logits
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    assert torch.allclose(packed, with_adapters, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match="lora_dropout must be 0 on fake-quantised"):
        m = sharp_teacher()
        prepare_qat(m, "ternary")
        add_lora(m, rank=2, dropout=0.1)
