"""After GPTQ's column loop: least-squares group parameters and coordinate descent over the codes.

Both work on GPTQ's own objective for one weight ``w[N, K]``, per output row n:
``(W_n - Q_n) H (W_n - Q_n)^T - 2 alpha Q_n D^T W_n^T`` up to a constant, with
``H`` the (undamped) input Hessian and GPTAQ's ``drift`` D (None: plain GPTQ).
Everything they need from ``w`` is its ``target_product`` V = W H + alpha W D:
computed once by ``gptq_quantize`` and shared by the refits and the sweeps
(each costs as much as the rest of a refit).
"""
from __future__ import annotations

import torch

from compress.quantization.config import QuantError
from compress.quantization.quantizers import Int4Weights, _stored, code_max, num_groups, sym_offset


def target_product(w: torch.Tensor, H: torch.Tensor, drift: torch.Tensor | None = None,
                   alpha: float = 1.0) -> torch.Tensor:
    """``V = W H + alpha W D`` (``[N, K]``, float32): row n is the objective's linear term for that row."""
    M = H.to(torch.float32)
    if drift is not None:
        M = M + alpha * drift.to(torch.float32)
    return w.detach().to(torch.float32) @ M


def coordinate_descent(w: torch.Tensor, H: torch.Tensor, q: Int4Weights, *, drift: torch.Tensor | None = None,
                       alpha: float = 1.0, block: int = 128, target: torch.Tensor | None = None) -> Int4Weights:
    """One sweep of exact coordinate descent over ``q``'s codes, its scales and zero points fixed.

    The objective is the refit's: ``(W_n - Q_n) H (W_n - Q_n)^T`` per row, minus ``2 alpha Q_n D^T W_n^T`` with
    GPTAQ's ``drift`` D.  For one column k it is, per row, a parabola in Q[n, k] with curvature H[k, k] and
    minimum at ``Q[n, k] + R[n, k] / H[k, k]`` (R = W H + alpha W D - Q H, the negative half-gradient), so
    rounding that point to the row's grid is the best code for the column given all the others: no sweep
    raises the objective.  Columns in order, the residual kept current in blocks (as GPTQ's loop does).
    ``target``: ``target_product(w, H, drift, alpha)`` if the caller has it.
    """
    N, K = q.codes.shape
    G = q.group_size
    H = H.to(torch.float32)
    V = target_product(w, H, drift, alpha) if target is None else target
    col_group = torch.arange(K, device=V.device) // G
    S = q.scales.to(torch.float32)[col_group]  # [K, N]: each column's scale per row
    Z = (torch.full_like(S, float(sym_offset(q.bits))) if q.zeros is None
         else q.zeros.to(torch.float32)[col_group])
    Ct = q.codes.t().to(torch.float32).contiguous()  # [K, N]: a column is a contiguous row
    Rt = V.t() - H @ ((Ct - Z) * S)  # H symmetric: (V - Q H)^T
    curvature = H.diagonal().clamp(min=torch.finfo(torch.float32).tiny).tolist()
    top = float(code_max(q.bits))
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        R1 = Rt[i1:i2].clone()
        delta = torch.zeros(i2 - i1, N, device=V.device)
        for j in range(i2 - i1):
            k = i1 + j
            ck, sk = Ct[k], S[k]
            # the row's minimum Q + R / H[k, k] on the code scale: c + R / (H[k, k] s)
            c = torch.div(R1[j], sk).div_(curvature[k]).add_(ck).round_().clamp_(0, top)
            moved = (c != ck).nonzero()[:, 0]  # a sweep changes few codes: update only their rows
            if not len(moved):
                continue
            c = c[moved]
            d = (c - ck[moved]).mul_(sk[moved])
            delta[j, moved] = d
            ck[moved] = c
            R1[j:].index_add_(1, moved, torch.outer(H[k, k:i2], d), alpha=-1.0)
        Rt[i2:].addmm_(H[i1:i2, i2:].t(), delta, alpha=-1.0)
    return Int4Weights(codes=Ct.t().to(torch.uint8).contiguous(), scales=q.scales, zeros=q.zeros,
                       group_size=G, bits=q.bits)


def refit_group_params(w: torch.Tensor, H: torch.Tensor, q: Int4Weights, *, drift: torch.Tensor | None = None,
                       alpha: float = 1.0, float_zero: bool = False, dtype: torch.dtype = torch.float16,
                       damp: float = 0.0, target: torch.Tensor | None = None) -> Int4Weights:
    """Least-squares scales (and float zero points) for ``q``'s fixed codes under GPTQ's own objective.

    With the codes fixed, the dequantised weight is linear in each group's
    parameters: ``Q[n, k] = a[g, n] * c[n, k] + b[g, n]`` (a = scale, b =
    -scale * zero).  For each output row the parameters of all its groups are
    solved jointly to minimise ``(W_n - Q_n) H (W_n - Q_n)^T`` (the layer's
    output error on the calibration inputs; with GPTAQ's ``drift`` the target
    is the original layer's output, its cross term scaled by ``alpha``).
    Symmetric weights and integer zero points keep their zero points and refit
    the scales only.  A row keeps its old parameters unless the new ones,
    rounded to ``dtype``, lower that error (and its scales stay positive), so
    the refit never makes a row worse.  ``target``: ``target_product(w, H,
    drift, alpha)`` if the caller has it (ignored with ``damp``, which changes H).
    """
    N, K = q.codes.shape
    if tuple(w.shape) != (N, K):
        raise QuantError(f"the weight is {tuple(w.shape)} but the codes are {(N, K)}; refit the weight they were "
                         f"quantised from.")
    if tuple(H.shape) != (K, K):
        raise QuantError(f"the Hessian is {tuple(H.shape)} but the weight has {K} inputs; pass its {K} x {K} "
                         f"input Hessian.")
    G = q.group_size
    n = num_groups(K, G)
    Kp = n * G
    H = H.to(torch.float32)
    if damp:
        H = H + damp * H.diagonal().mean() * torch.eye(K, device=H.device)
        target = None
    V = target_product(w, H, drift, alpha) if target is None else target
    float_zero = float_zero and q.zeros is not None
    dev = V.device
    old_s = q.scales.to(torch.float32)  # [n, N]
    z = torch.full_like(old_s, float(sym_offset(q.bits))) if q.zeros is None else q.zeros.to(torch.float32)
    C = q.codes.to(torch.float32)
    if not float_zero:  # scale only: Q = a * (c - z)
        C = C - z.t().repeat_interleave(G, dim=1)[:, :K]
    if Kp > K:  # a partial last group: zero columns (and Hessian rows) add nothing to any sum
        pad = Kp - K
        C = torch.nn.functional.pad(C, (0, pad))
        V = torch.nn.functional.pad(V, (0, pad))
        H = torch.nn.functional.pad(H, (0, pad, 0, pad))

    def seg(x: torch.Tensor) -> torch.Tensor:  # [..., Kp] -> per-group sums [..., n]
        return x.reshape(*x.shape[:-1], n, G).sum(-1)

    m = 2 * n if float_zero else n
    M = torch.zeros(N, m, m, device=dev)
    r = torch.zeros(N, m, device=dev)
    r[:, :n] = seg(C * V)
    # Scale-scale block: M[:, g, h] = sum over k in g, l in h of c[k] H[k, l] c[l]; symmetric, so only h >= g.
    for g in range(n):
        a = g * G
        Y = C[:, a:a + G] @ H[a:a + G, a:]  # [N, Kp - a]
        block = Y.mul_(C[:, a:]).reshape(N, n - g, G).sum(-1)
        M[:, g, g:n] = block
        M[:, g + 1:n, g] = block[:, 1:]
    if float_zero:
        Hseg = seg(H)  # [Kp, n]: row k's sum over each group's columns
        # scale-offset block: M[:, g, n + h] = sum over k in g of c[k] * Hseg[k, h], one product per group
        cross = torch.bmm(C.reshape(N, n, G).transpose(0, 1), Hseg.reshape(n, G, n))  # [g, N, h]
        M[:, :n, n:] = cross.transpose(0, 1)
        M[:, n:, :n] = M[:, :n, n:].transpose(1, 2)
        M[:, n:, n:] = Hseg.reshape(n, G, n).sum(1)  # block sums of H (symmetric)
        r[:, n:] = seg(V)

    def theta(s: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
        return torch.cat([s.t(), (-s * zz).t()], dim=1) if float_zero else s.t()

    def loss(t: torch.Tensor) -> torch.Tensor:  # up to a constant, per row
        return (t[:, None, :] @ M @ t[:, :, None]).reshape(N) - 2 * (t * r).sum(1)

    ridge = 1e-6 * M.diagonal(dim1=1, dim2=2).abs().mean(1).clamp(min=1e-30)
    A = M + ridge[:, None, None] * torch.eye(m, device=dev)
    sol, info = torch.linalg.solve_ex(A, r[:, :, None])
    sol = sol[:, :, 0]
    new_s = _stored(sol[:, :n].t(), dtype)
    if float_zero:
        new_z = (-sol[:, n:].t() / new_s).to(dtype).to(torch.float32)
    else:
        new_z = z
    ok = (info == 0) & (sol[:, :n] > 0).all(1) & torch.isfinite(sol).all(1)
    better = ok & (loss(theta(new_s, new_z)) < loss(theta(old_s, z)))
    scales = torch.where(better[None, :], new_s, old_s)
    zeros = None if q.zeros is None else torch.where(better[None, :], new_z, z) if float_zero else q.zeros
    return Int4Weights(codes=q.codes, scales=scales.to(q.scales.dtype),
                       zeros=None if zeros is None else zeros.to(q.zeros.dtype), group_size=G, bits=q.bits)
