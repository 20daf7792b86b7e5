"""FSDP pieces on one process (a gloo group of one); two processes are in test_distributed.py."""
import pytest
import torch
import torch.distributed as dist

from compress.recovery.fsdp import (
    AUTO_FSDP_PARAMS,
    choose_strategy,
    copy_back,
    gathered,
    is_sharded,
    load_full,
    sharded_copy,
)
from compress.recovery.state import optimizer_tensors, restore_optimizer
from tests.recovery.helpers import all_equal, params, sharp_teacher, token_data

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def test_auto_takes_fsdp_for_large_models_on_several_processes():
    assert choose_strategy("auto", AUTO_FSDP_PARAMS - 1, 8) == "ddp"
    assert choose_strategy("auto", AUTO_FSDP_PARAMS, 8) == "fsdp"
    assert choose_strategy("fsdp", 10, 2) == "fsdp" and choose_strategy("ddp", 10**12, 2) == "ddp"
    assert choose_strategy("fsdp", 10**12, 1) == "single"  # one process: nothing to share


@pytest.fixture
def group_of_one(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_sharded_copy_trains_and_gives_its_weights_back(group_of_one):
    model = sharp_teacher()
    before = params(model)
    work = sharded_copy(model, torch.device("cpu"), world=1)
    ps = {n: p for n, p in work.named_parameters()}
    assert all(is_sharded(p) for p in ps.values()) and work.lm_head.weight is work.model.embed_tokens.weight
    ids = token_data(4, 16)
    with torch.no_grad():
        assert torch.equal(work(input_ids=ids).logits, model(input_ids=ids).logits)
    opt = torch.optim.AdamW(ps.values(), lr=1e-2, foreach=False)
    work(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all_equal(model, before)  # the caller's model is not touched while the copy trains
    full = gathered(ps)
    assert all(not is_sharded(t) and t.shape == before[n].shape for n, t in full.items())
    moments = optimizer_tensors(opt, ps)
    assert moments["model.norm.weight::exp_avg"].shape == (64,) and not is_sharded(moments["model.norm.weight::exp_avg"])

    # the optimizer state round-trips into a fresh sharded copy
    again = sharded_copy(model, torch.device("cpu"), world=1)
    ps2 = {n: p for n, p in again.named_parameters()}
    for n, p in ps2.items():
        load_full(p, full[n])
    opt2 = torch.optim.AdamW(ps2.values(), lr=1e-2, foreach=False)
    restore_optimizer(opt2, ps2, moments)
    assert all(torch.equal(a, b) for a, b in zip(optimizer_tensors(opt2, ps2).values(), moments.values()))

    copy_back(ps, model)
    assert all_equal(params(model), full) and not all_equal(model, before)
    with torch.no_grad():
        assert torch.equal(work(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_loop_trains_through_fsdp_with_lora_qat_checkpoints_and_resume(group_of_one, monkeypatch, tmp_path):
    """recover's FSDP path on a group of one (two processes: test_distributed.py) against the plain path."""
    import copy
    import dataclasses

    from compress.quantization import QuantLinear, prepare_qat
    from compress.recovery import RecoverConfig, recover
    from compress.recovery import loop

    teacher, ids = sharp_teacher(), token_data(24, 16)

    def run(strategy, out):
        monkeypatch.setattr(loop.fsdp, "choose_strategy", lambda *a, **k: strategy)
        student = copy.deepcopy(teacher)
        prepare_qat(student, "ternary", qat_lambda=0.0)
        cfg = RecoverConfig(steps=4, batch_size=4, lr=1e-3, lora_rank=4, qat_warmup_steps=2, eval_every=2, patience=5,
                            checkpoint_every=2, output_dir=str(out), progress=False)
        return student, recover(student, teacher, ids[:16], cfg, eval_data=ids[16:])

    sharded, rep = run("fsdp", tmp_path / "fsdp")
    plain, want = run("single", tmp_path / "plain")
    assert rep.parallel == "fsdp" and rep.lora_merged and rep.qat_converted and rep.lora_modules == 14
    assert sum(isinstance(m, QuantLinear) for m in sharded.modules()) == 14  # the caller's model, packed
    assert [e["loss"] for e in rep.train] == pytest.approx([e["loss"] for e in want.train], rel=1e-5)
    assert [e["loss"] for e in rep.evals] == pytest.approx([e["loss"] for e in want.evals], rel=1e-5)
    with torch.no_grad():
        assert torch.allclose(sharded(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)

    class Stop(Exception):
        pass

    def stop(info):
        if info.step == 3:
            raise Stop

    monkeypatch.setattr(loop.fsdp, "choose_strategy", lambda *a, **k: "fsdp")
    student = copy.deepcopy(teacher)
    prepare_qat(student, "ternary", qat_lambda=0.0)
    cfg = RecoverConfig(steps=4, batch_size=4, lr=1e-3, lora_rank=4, qat_warmup_steps=2, eval_every=2, patience=5,
                        checkpoint_every=2, output_dir=str(tmp_path / "stopped"), progress=False)
    with pytest.raises(Stop):
        recover(student, teacher, ids[:16], cfg, eval_data=ids[16:], on_step=stop)
    resumed = copy.deepcopy(teacher)
    prepare_qat(resumed, "ternary", qat_lambda=0.0)
    again = recover(resumed, teacher, ids[:16], dataclasses.replace(cfg, resume=True), eval_data=ids[16:])
    assert again.resumed_from == 2 and [e["loss"] for e in again.train] == [e["loss"] for e in rep.train]
    assert all_equal(resumed, sharded)
