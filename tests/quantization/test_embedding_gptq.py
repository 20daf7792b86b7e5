"""GPTQ codes for the embedding table against the output head's inputs (embedding_rounding="gptq")."""
import pytest
import torch

from compress.cli import main
from compress.errors import ConfigError
from compress.quantization import QuantConfig, QuantError, quantize
from compress.quantization.embedding import head_input_hessian, quantize_rows
from compress.quantization.gptq import gptq_rows
from tests.tiny import VOCAB, tiny_model

DATA = torch.randint(3, VOCAB, (6, 24), generator=torch.Generator().manual_seed(1))


def _output_error(w, q, H):
    d = (w - q).to(torch.float64)
    return float(torch.einsum("nk,kl,nl->", d, H.to(torch.float64), d))


def _dequant(codes, scales, group):
    return codes.to(torch.float32) * scales.to(torch.float32).repeat_interleave(group, dim=1)


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 16), (8, 64)])
def test_gptq_codes_move_the_outputs_less_than_nearest_on_the_same_grid(bits, group):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 64, generator=g)
    x = torch.randn(500, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.1 * torch.randn(500, 64, generator=g)
    H = x.t() @ x / len(x)  # correlated inputs, as a head's are
    codes_n, scales_n = quantize_rows(w, bits, group)
    codes_g, scales_g = quantize_rows(w, bits, group, hessian=H)
    assert torch.equal(scales_n, scales_g)  # the grid is the same; only the codes differ
    top = 7 if bits == 4 else 127
    assert codes_g.dtype == torch.int8 and int(codes_g.max()) <= top and int(codes_g.min()) >= -top - (bits == 4)
    nearest = _output_error(w, _dequant(codes_n, scales_n, group), H)
    chosen = _output_error(w, _dequant(codes_g, scales_g, group), H)
    assert chosen < 0.8 * nearest


def test_gptq_rows_with_an_identity_hessian_is_round_to_nearest():
    w = torch.randn(40, 32, generator=torch.Generator().manual_seed(2))
    codes_n, scales = quantize_rows(w, 4, 16)
    codes = gptq_rows(w, torch.eye(32), scales, -8, 7, damp=0.0)
    assert torch.equal(codes, codes_n)  # no correlation: nothing to push onto other columns


def test_head_input_hessian_is_the_mean_outer_product_of_the_final_hidden_states():
    model = tiny_model("llama")
    H = head_input_hessian(model, DATA, batch_size=4)
    with torch.no_grad():
        h = model.model(input_ids=DATA).last_hidden_state.reshape(-1, model.config.hidden_size)
    assert torch.allclose(H, h.t() @ h / len(h), rtol=1e-4, atol=1e-5)
    assert head_input_hessian(tiny_model("bert"), DATA) is None  # no output head


@pytest.mark.parametrize("family", ["llama", "mistral"])  # tied, untied
def test_quantize_with_data_chooses_the_head_codes_by_gptq(family):
    base = tiny_model(family)
    H = head_input_hessian(base, DATA)
    head_w = base.get_output_embeddings().weight.detach().clone()
    errors = {}
    for rounding in ("gptq", "nearest"):
        model = tiny_model(family)
        report = quantize(model, QuantConfig(method="int4", embeddings="int4", embedding_rounding=rounding), data=DATA)
        head = model.get_output_embeddings()
        errors[rounding] = _output_error(head_w, head.weight.detach(), H)
        said = any("chosen by GPTQ against the output head's inputs" in n for n in report.notes)
        assert said == (rounding == "gptq")
    assert errors["gptq"] < errors["nearest"]


def test_without_data_the_table_is_rounded_to_nearest_and_the_report_says_so():
    model, same = tiny_model("llama"), tiny_model("llama")
    report = quantize(model, QuantConfig(method="int4", embeddings="int4"))
    quantize(same, QuantConfig(method="int4", embeddings="int4", embedding_rounding="nearest"), data=DATA)
    assert any("rounded to nearest: pass calibration data" in n for n in report.notes)
    assert torch.equal(model.get_input_embeddings().qdata, same.get_input_embeddings().qdata)


def test_bad_rounding_and_bad_data_are_refused_before_any_weight_changes():
    with pytest.raises(ConfigError, match="embedding_rounding must be one of 'gptq', 'nearest'"):
        QuantConfig(embeddings="int4", embedding_rounding="best")
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantError, match="non-empty integer tensor"):
        quantize(model, QuantConfig(method="int4", embeddings="int4"), data=torch.rand(2, 8))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_cli_refuses_an_unknown_rounding(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "m", "--method", "int4", "--embeddings", "int4", "--embedding-rounding", "best", "-o", "x"])
    assert e.value.code == 2
    assert "--embedding-rounding" in capsys.readouterr().err


def test_the_budget_rates_the_table_with_the_codes_quantising_will_write():
    from compress.quantization.budget import plan_budget, stored_file_bytes

    errors, notes = {}, {}
    for rounding in ("gptq", "nearest"):
        model = tiny_model("llama")
        cfg = QuantConfig(target_size=int(stored_file_bytes(model) * 0.5), embedding_rounding=rounding,
                          target_sequences=2, progress=False)
        plan = plan_budget(model, cfg, DATA)
        table = next(u for u in plan.units if u.kind == "embedding")
        assert (table.hessian is not None) == (rounding == "gptq")
        errors[rounding] = {o.format: o.error for o in table.options}
        notes[rounding] = " ".join(plan.notes)
    # the Hessian comes from the 4 rows the 2 measured windows are not in
    assert "GPTQ against the output head's inputs on 4 calibration sequences other than the windows measured" \
        in notes["gptq"]
    assert "GPTQ against" not in notes["nearest"]
    assert errors["gptq"]["embeddings-int4"] != errors["nearest"]["embeddings-int4"]


@pytest.mark.parametrize("fields,reads", [
    ({}, False),
    ({"gptq": True}, True),
    ({"embeddings": "int4"}, True),
    ({"embeddings": "int4", "embedding_rounding": "nearest"}, False),
    ({"target_size": "1MiB"}, True),
    ({"method": "ternary", "embeddings": "int8"}, True),
])
def test_a_config_says_whether_quantising_reads_calibration_text(fields, reads):
    assert QuantConfig(**fields).needs_data is reads
