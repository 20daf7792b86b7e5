import pytest

from compress.errors import CompressError, ConfigError
from compress.recovery import RecoverConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=10, tokens=1000), "give steps or tokens, not both"),
        (dict(steps=0), "steps must be a positive integer, got 0"),
        (dict(tokens=-5), "tokens must be a positive integer, got -5"),
        (dict(batch_size=0), "batch_size must be an integer of at least 1, got 0"),
        (dict(grad_accum=1.5), "grad_accum must be an integer of at least 1, got 1.5"),
        (dict(lr=0.0), "lr must be a positive number, got 0.0"),
        (dict(lr=float("nan")), "lr must be a positive number"),
        (dict(schedule="linear"), "schedule must be one of 'wsd', 'cosine', 'constant', got 'linear'"),
        (dict(warmup_fraction=1.5), "warmup_fraction must be between 0 and 1, got 1.5"),
        (dict(warmup_fraction=0.5, decay_fraction=0.6), r"warmup_fraction \+ decay_fraction must not exceed 1"),
        (dict(alpha=-0.1), "alpha must be between 0 and 1, got -0.1"),
        (dict(temperature=0), "temperature must be a positive number, got 0"),
        (dict(grad_clip=-1.0), "grad_clip must be a non-negative number"),
        (dict(eval_every=-1), "eval_every must be a non-negative integer"),
        (dict(eval_sequences=0), "eval_sequences must be at least 1"),
        (dict(lora_rank=-2), "lora_rank must be a non-negative integer"),
        (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\), got 1.0"),
        (dict(lora_targets=("",)), "lora_targets must be module names or regexes"),
        (dict(betas=(0.9,)), "betas must be two numbers in"),
        (dict(precision="fp16"), "precision must be one of 'auto', 'fp32', 'bf16', got 'fp16'"),
        (dict(resume=True), "resume=True needs output_dir"),
        (dict(plot=True), "plot=True writes loss.png into output_dir"),
        (dict(teacher_topk=-1), "teacher_topk must be a non-negative integer"),
        (dict(device="gpu0"), "device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu0'"),
        (dict(distributed="zero3"), "distributed must be one of 'auto', 'ddp', 'fsdp', got 'zero3'"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RecoverConfig(**kwargs)
    assert issubclass(ConfigError, CompressError)


def test_defaults_and_budget():
    cfg = RecoverConfig()
    assert cfg.total_steps(1024) == 1000
    assert RecoverConfig(tokens=10_000).total_steps(1024) == 10  # rounds up to whole steps
    assert RecoverConfig(steps=7).total_steps(1024) == 7
    assert RecoverConfig(lora_targets="q_proj").lora_targets == ("q_proj",)


def test_differences_name_the_changed_fields_and_skip_exempt_ones():
    a = RecoverConfig(steps=10, lr=1e-3, output_dir="/tmp/x")
    b = RecoverConfig(steps=10, lr=2e-3, output_dir="/tmp/y", resume=True, progress=False)
    assert b.differences(a.to_dict()) == ["lr: 0.001 -> 0.002"]


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16_only(monkeypatch):
    import torch

    from compress import machine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert machine.uses_bf16("bf16", cpu) and not machine.uses_bf16("fp32", cuda) and machine.uses_bf16("auto", cuda)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": False})
    assert not machine.cpu_bf16() and not machine.uses_bf16("auto", cpu)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": False})
    assert machine.cpu_bf16() and machine.uses_bf16("auto", cpu)
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # older torch: no probe, no bf16
    assert not machine.cpu_bf16()
