"""Models and data for the recovery tests: a teacher with peaked distributions and a damaged copy."""
from __future__ import annotations

import copy

import torch
from torch import nn

from compress.arch import adapter_for
from tests.tiny import VOCAB, tiny_config, tiny_model


def sharp_teacher(seed: int = 0) -> nn.Module:
    """A tiny Llama whose next-token distributions are peaked (a random init is nearly uniform,
    which makes top-1 agreement meaningless)."""
    model = tiny_model("llama", seed=seed)
    with torch.no_grad():
        adapter_for(model).final_norm.weight.mul_(8.0)
    return model


def damaged_copy(model: nn.Module, scale: float = 0.3, seed: int = 1) -> nn.Module:
    """The model with Gaussian noise on every parameter: a stand-in for a compressed student."""
    student = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.abs().mean())
    return student


def odd_student(seed: int = 3) -> nn.Module:
    """A tiny Llama like ``sharp_teacher``'s but with an MLP 95 wide: it splits unevenly over two ranks."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.intermediate_size = 95
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def token_data(n: int = 64, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def all_equal(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    a = params(a) if isinstance(a, nn.Module) else a
    b = params(b) if isinstance(b, nn.Module) else b
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trained_teacher(train: torch.Tensor, steps: int = 40, seed: int = 0) -> nn.Module:
    """A tiny Llama fitted to ``train`` with a plain loop, so held-out CE means something."""
    model = tiny_model("llama", seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        ids = train[torch.randint(0, len(train), (8,), generator=gen)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def resumable_run(out, on_step=None, student=None, teacher=None, ids=None, **overrides):
    """The resume tests' run: 12 steps, checkpoints every 4, evaluations every 3, resume=True."""
    from compress.recovery import RecoverConfig, recover

    teacher = teacher if teacher is not None else sharp_teacher()
    student = student if student is not None else damaged_copy(teacher)
    ids = ids if ids is not None else token_data(40, 16)
    kw = dict(steps=12, batch_size=2, grad_accum=2, lr=1e-3, schedule="cosine", warmup_fraction=0.2,
              eval_every=3, patience=50, checkpoint_every=4, output_dir=str(out), resume=True, progress=False)
    kw.update(overrides)
    report = recover(student, teacher, ids[:32], RecoverConfig(**kw), eval_data=ids[32:], on_step=on_step)
    return student, report
