"""Distillation and next-token losses, on plain logit tensors.

Shapes: logits ``[..., V]`` (any leading dims, one row per position);
every loss is a mean over rows, computed in float32.

The offline (top-k) loss approximates the full KL: the teacher's
distribution is kept exactly on its top-k tokens and the rest of its mass
goes to one *tail* bucket; the student's distribution is merged into the
same k + 1 buckets and the loss is the KL between the two coarse
distributions.  By the data-processing inequality it never exceeds the full
KL; it equals it when, inside the tail, the student's probabilities are
proportional to the teacher's.  The gap is the teacher's tail mass times the
KL between the two tail-conditional distributions, so it is small when the
top-k cover most of the teacher's mass (k = 64 usually covers > 95% for
trained LMs).  The student's tail is matched in mass, not in shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over rows.

    The ``T^2`` keeps gradient magnitudes comparable across temperatures
    (Hinton et al.), so ``alpha`` means the same at any ``T``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape.")
    V = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, V).float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.reshape(-1, V).float() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature**2


def topk_logprobs(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` largest log-probabilities at temperature ``T`` and their token ids."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, indices = log_p.topk(k, dim=-1)
    return values, indices


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_indices: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``T^2 * KL`` over the teacher's top-k tokens plus one tail bucket (see the module docstring).

    ``teacher_logprobs`` ``[..., k]`` are log-probabilities of the full
    teacher distribution at temperature ``T`` (``topk_logprobs``), at token
    ids ``teacher_indices`` ``[..., k]``; ``k`` must be below the vocabulary size.
    """
    V, k = student_logits.shape[-1], teacher_logprobs.shape[-1]
    if k >= V:
        raise ValueError(f"top-k needs k below the vocabulary size ({k} >= {V}); use the full KL.")
    log_q = F.log_softmax(student_logits.reshape(-1, V).float() / temperature, dim=-1)
    idx = teacher_indices.reshape(-1, k).long()
    log_p_k = teacher_logprobs.reshape(-1, k).float()
    log_q_k = log_q.gather(-1, idx)
    # the student's tail: log of the mass outside the teacher's top-k, computed without cancellation
    log_q_tail = torch.logsumexp(log_q.scatter(-1, idx, float("-inf")), dim=-1)
    p_k = log_p_k.exp()
    p_tail = (1.0 - p_k.sum(-1)).clamp_min(0.0)
    head = (p_k * (log_p_k - log_q_k)).sum(-1)
    tail = torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
    return (head + tail).mean() * temperature**2


def hidden_loss(student: list[torch.Tensor] | tuple[torch.Tensor, ...],
                teacher: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over layers and tokens of ``|h_s - h_t|^2 / |h_t|^2`` for hidden states ``[..., d]``.

    Relative per token, because a few tokens (the first, in most decoders)
    carry residual-stream norms hundreds of times the rest, and a plain MSE
    would spend the whole term on them.
    """
    if len(student) != len(teacher):
        raise ValueError(f"the student gives {len(student)} hidden states and the teacher {len(teacher)}.")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student hidden state {tuple(s.shape)} and teacher's {tuple(t.shape)} differ in shape.")
        s, t = s.float(), t.float()
        terms.append(((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-6)).mean())
    return torch.stack(terms).mean()


def ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``targets`` hold the token each row should predict."""
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1))
