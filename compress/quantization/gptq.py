"""GPTQ math (Frantar et al. 2022): int4 with Hessian-based error compensation.

Plain functions on tensors: ``accumulate_hessian`` folds a batch of layer
inputs into H = 2/n * sum x x^T, and ``gptq_quantize(w, H, cfg)`` returns the
same ``Int4Weights`` as round-to-nearest, with codes chosen column by column
so that each column's rounding error is pushed onto the columns not yet
quantised (through the Cholesky factor of H^-1), in blocks for speed.

With ``gptaq`` (GPTQv2, Li et al. 2025, "asymmetric calibration") the target
is the original model's output, not the output of the original weights on the
already-quantised model's inputs: besides H = X X^T (quantised inputs) the
driver accumulates dXX^T = (X_fp - X) X^T, and each column's update also moves
the columns still to do by the part of the accumulated input drift that the
column's weight carries (through P = alpha * triu(dXX^T U^T, 1) U, with U the
Cholesky factor of H^-1 and alpha = ``gptaq_alpha``, 0.25 in the paper).

Group parameters use the updated weights at each group's first column, as the
reference implementation does.  With ``act_order`` the groups stay runs of
consecutive columns (the packed layout needs no column permutation); each
group's parameters come from all its columns as updated when the loop first
reaches one of them (``_rows_now`` adds the updates a block has not yet pushed
on), or with ``static_groups`` from the original weights.  With ``clip_search`` each group's range is the shrink of
its min-max range with the least squared rounding error, each column weighted
by its Hessian diagonal.  With ``group_refit`` (default) the scales and float
zero points are then refitted to the chosen codes by least squares under the
same objective (``refit_group_params``).  ``code_sweeps`` then runs
coordinate descent over the codes under that objective (``coordinate_descent``,
QuantEase: Behdin et al. 2023), each sweep followed by another refit; both
live in refine.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from compress.quantization.config import QuantConfig, QuantError
from compress.quantization.quantizers import (
    Int4Weights,
    code_max,
    effective_group_size,
    int4_params,
    num_groups,
    sym_offset,
)
from compress.quantization.refine import coordinate_descent, refit_group_params, target_product

__all__ = ["accumulate_drift", "accumulate_hessian", "coordinate_descent", "gptq_quantize", "gptq_rows",
           "prepare_hessian", "refit_group_params"]

_DAMP_RETRIES = 4  # each retry multiplies damping by 10
# Group refit knobs, kept for measurement (benchmarks/gptq_variants.py refit_damp= / refit_passes= / refit_alpha=):
# H's damping in the refit's objective (a fraction of its mean diagonal, pulling toward the original weights), the
# number of GPTQ passes (each after the first re-runs the column loop with the refitted parameters fixed, then refits).
# On SmolLM2-135M g128 none lowered the perplexity on news below one plain refit (README, issue 18).
REFIT_DAMP = 0.0
REFIT_PASSES = 1
REFIT_ALPHA = None  # the refit's weight of GPTAQ's drift term (None: gptaq_alpha, as the column loop)


def accumulate_hessian(H: torch.Tensor, count: int, x: torch.Tensor) -> int:
    """Fold inputs ``x[..., K]`` into the running ``H[K, K]`` in place; return the new sample count."""
    return fold_product(H, count, *input_product(x))


def accumulate_drift(D: torch.Tensor, count: int, x_fp: torch.Tensor, x: torch.Tensor) -> int:
    """Fold ``(x_fp - x)^T x`` into the running ``D[K, K]`` (scaled as ``accumulate_hessian`` scales H); return the count."""
    return fold_product(D, count, *input_product(x, x_fp))


def input_product(x: torch.Tensor, x_fp: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """``left^T x`` over the rows of a batch (left: ``x`` itself, or GPTAQ's ``x_fp - x``) and the row count.

    Separate from ``fold_product`` so that modules fed the same tensor (q/k/v,
    gate/up) share one K x K product: it is most of the statistics' cost.
    ``dtype`` bfloat16: the product of the inputs rounded to bf16 (``x_fp - x``
    is taken in float32 first), returned as float32 for the float32 running
    sums; 4-5x faster on bf16 units, and rounds no more than the bf16 layer
    forwards that produced ``x`` already did.
    """
    with torch.autocast(x.device.type, enabled=False):  # our own dtype, not the forwards' autocast
        x = x.detach().reshape(-1, x.shape[-1])
        if x_fp is None:
            return _gram(x.to(dtype)).to(torch.float32), x.shape[0]
        left = x_fp.detach().reshape(-1, x_fp.shape[-1]).to(torch.float32) - x.to(torch.float32)
        return (left.to(dtype).t() @ x.to(dtype)).to(torch.float32), x.shape[0]


def _block_edges(K: int, block: int) -> list[int]:
    """Boundaries of about ``K / block`` near-equal blocks of ``range(K)`` (at least one block)."""
    nb = max(1, round(K / block))
    return [K * i // nb for i in range(nb + 1)]


def _gram(x: torch.Tensor, block: int = 192) -> torch.Tensor:
    """``x^T x`` from its upper block triangle, mirrored: about 20% faster than the full product on the CPU for
    K >= 384 (the lower blocks are not computed), and exactly symmetric."""
    K = x.shape[1]
    edges = _block_edges(K, block)
    nb = len(edges) - 1
    if nb < 2:
        return x.t() @ x
    out = torch.empty(K, K, dtype=x.dtype, device=x.device)
    for a in range(nb):
        rows = slice(edges[a], edges[a + 1])
        out[rows, edges[a]:] = x[:, rows].t() @ x[:, edges[a]:]
        for b in range(a + 1, nb):
            cols = slice(edges[b], edges[b + 1])
            out[cols, rows] = out[rows, cols].t()
    return out


def fold_product(S: torch.Tensor, count: int, product: torch.Tensor, rows: int) -> int:
    """S <- the running 2/n * sum over all rows so far, given one batch's ``input_product``; return the new count."""
    if rows == 0:
        return count
    total = count + rows
    S.mul_(count / total).add_(product, alpha=2.0 / total)
    return total


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, raising damping until it exists.

    Damps ``H``'s diagonal in place (callers pass their own copy): K x K matrices
    are the largest temporaries of GPTQ, 9 MiB each for K = 1536.
    """
    mean_diag = H.diagonal().mean().item()
    added = 0.0
    for attempt in range(_DAMP_RETRIES):
        extra = (damp * 10**attempt) * mean_diag
        H.diagonal().add_(extra - added)
        added = extra
        # With J the exchange matrix: J H J = L L^T gives H = R R^T, R = J L J upper, so H^-1 = U^T U with
        # U = R^-1 = J L^-1 J: one factorisation and one triangular inverse (half the work of inverting H and
        # factorising the inverse).
        L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
        if int(info) == 0:
            eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
            return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
    raise QuantError(
        f"the GPTQ Hessian is not positive definite even with damping {damp * 10 ** (_DAMP_RETRIES - 1):g}; "
        f"use more (or more varied) calibration data, or quantise this layer without gptq."
    )


def _drift_term(D: torch.Tensor, U: torch.Tensor, block: int = 256) -> torch.Tensor:
    """GPTAQ's ``triu(D U^T, 1) U`` for upper triangular ``U``, by blocks: both products are upper (block)
    triangular, so about a sixth of the two dense K x K x K products is computed."""
    edges = _block_edges(D.shape[0], block)
    nb = len(edges) - 1
    T, P = torch.zeros_like(D), torch.zeros_like(D)
    for a in range(nb):  # T[I, J] = D[I, J:] U[J, J:]^T (U[J, k] = 0 for k before J's block)
        rows = slice(edges[a], edges[a + 1])
        for b in range(a, nb):
            cols, start = slice(edges[b], edges[b + 1]), edges[b]
            T[rows, cols] = D[rows, start:] @ U[cols, start:].t()
        T[rows, rows] = T[rows, rows].triu(diagonal=1)
    for a in range(nb):  # P[I, J] = T[I, I..J] U[I..J, J]
        rows = slice(edges[a], edges[a + 1])
        for b in range(a, nb):
            cols, inner = slice(edges[b], edges[b + 1]), slice(edges[a], edges[b + 1])
            P[rows, cols] = T[rows, inner] @ U[inner, cols]
    return P


@dataclass
class PreparedHessian:
    """What GPTQ derives from a Hessian before touching weights; shared by modules with equal statistics."""

    dead: torch.Tensor  # inputs that were always zero
    hdiag: torch.Tensor | None  # the clip search's column weights (undamped diagonal), None without the search
    perm: torch.Tensor | None  # activation order, None without it
    Hinv: torch.Tensor  # upper Cholesky factor of the damped inverse, in ``perm`` order
    P: torch.Tensor | None  # GPTAQ's drift term, None for plain GPTQ
    settings: tuple  # the config fields it depends on
    H: torch.Tensor | None = None  # for the group refit: the undamped Hessian in column order (None without it)
    drift: torch.Tensor | None = None  # for the group refit: GPTAQ's dXX^T in column order

    @staticmethod
    def settings_of(cfg: QuantConfig) -> tuple:
        return cfg.damp, cfg.act_order, cfg.clip_search, cfg.gptaq, cfg.gptaq_alpha, cfg.group_refit, cfg.code_sweeps > 0

    def fits(self, cfg: QuantConfig) -> bool:
        return self.settings == self.settings_of(cfg)


def prepare_hessian(H: torch.Tensor, cfg: QuantConfig, *, drift: torch.Tensor | None = None,
                    overwrite_hessian: bool = False) -> PreparedHessian:
    """Dead inputs, activation order, the damped inverse's Cholesky factor and GPTAQ's P for ``H[K, K]``.

    ``overwrite_hessian``: work in ``H`` itself instead of a copy (the layer-by-layer
    driver's Hessians are used once; K x K copies are the largest temporaries here).
    ``drift``: dXX^T from ``accumulate_drift`` (GPTAQ); None is plain GPTQ.
    """
    H = H.to(torch.float32) if overwrite_hessian else H.to(torch.float32).clone()
    dead = H.diagonal() == 0  # inputs that were always zero carry no information
    H[dead, dead] = 1.0
    if drift is not None:
        drift = drift.to(torch.float32).clone()
        drift[:, dead] = 0.0
    hdiag = H.diagonal().clone() if cfg.clip_search else None
    # The group refit and the code sweeps need the objective after the column loop: H undamped and drift, in
    # column order.
    refit = ((H if cfg.act_order else H.clone()), drift) if cfg.group_refit or cfg.code_sweeps else (None, None)
    perm = None
    if cfg.act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        H = H[perm][:, perm]
        if drift is not None:
            drift = drift[perm][:, perm]
    with _one_cpu_thread(H.device):
        Hinv = _inverse_cholesky(H, cfg.damp)
        P = None
        if drift is not None:
            P = _drift_term(drift, Hinv).mul_(cfg.gptaq_alpha)
    return PreparedHessian(dead, hdiag, perm, Hinv, P, PreparedHessian.settings_of(cfg), *refit)


def gptq_quantize(w: torch.Tensor, H: torch.Tensor | None, cfg: QuantConfig, *, overwrite_hessian: bool = False,
                  drift: torch.Tensor | None = None, prepared: PreparedHessian | None = None,
                  _params=None) -> Int4Weights:
    """GPTQ-quantise ``w[N, K]`` given the input Hessian ``H[K, K]``; returns codes in original column order.

    ``overwrite_hessian`` and ``drift``: as in ``prepare_hessian``.  ``prepared``:
    that function's result for this Hessian and config, instead of ``H`` and ``drift``.
    ``_params``: fixed (scales, zeros) for static groups instead of searching them
    (``REFIT_PASSES``' later passes).
    """
    if prepared is None:
        prepared = prepare_hessian(H, cfg, drift=drift, overwrite_hessian=overwrite_hessian)
    elif not prepared.fits(cfg):
        raise ValueError("gptq_quantize: the prepared Hessian was made for other damping / order / GPTAQ settings.")
    N, K = w.shape
    G = effective_group_size(cfg, K)
    dtype = cfg.torch_scale_dtype
    W = w.detach().to(torch.float32).clone()
    W[:, prepared.dead] = 0.0
    hdiag, perm = prepared.hdiag, prepared.perm
    search = {"clip_search": cfg.clip_search}

    n_groups, dev = num_groups(K, G), W.device
    float_zero = cfg.zero_point == "float"
    scales = torch.empty(n_groups, N, device=dev)
    zeros = None if cfg.symmetric else torch.empty(n_groups, N, device=dev)
    lazy = cfg.act_order and not cfg.static_groups and G < K and _params is None
    if (cfg.act_order or G == K) and not lazy:
        # static groups: parameters from the weights before any compensation
        for g in range(n_groups):
            cols = slice(g * G, (g + 1) * G)
            if _params is not None:
                scales[g] = _params[0][g].float()
                if zeros is not None:
                    zeros[g] = _params[1][g].float()
                continue
            scales[g], z = int4_params(W[:, cols], cfg.symmetric, dtype, float_zero, cfg.bits, **search,
                                       weight=None if hdiag is None else hdiag[cols])
            if zeros is not None:
                zeros[g] = z
    W0 = W  # the weights in column order, for the group refit
    if perm is not None:
        W = W[:, perm]
    # Work on W^T so that a weight column is a contiguous row: the inner loop is row ops and rank-1 updates.
    Wt = W.t().contiguous()
    del W
    codes = torch.zeros(K, N, dtype=torch.uint8, device=dev)  # codes 0..15 are exact in any dtype
    group_of = ((perm if perm is not None else torch.arange(K)) // G).tolist()  # host list: no syncs in the loop
    static = cfg.act_order or G == K
    # blocks hold whole groups so a group's columns are all up to date when its parameters are found
    B = cfg.block_size if static else G * max(1, cfg.block_size // G)
    with _one_cpu_thread(dev):
        _column_loop(Wt, prepared.Hinv, codes, scales, zeros, group_of, G, B, static,
                     (cfg.symmetric, dtype, float_zero, cfg.bits),
                     hdiag, prepared.P, lazy_perm=perm if lazy else None)

    codes = codes.t()
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    q = Int4Weights(
        codes=codes.to(torch.uint8).contiguous(),
        scales=scales.to(dtype),
        zeros=None if zeros is None else zeros.to(dtype),
        group_size=G,
        bits=cfg.bits,
    )
    alpha = cfg.gptaq_alpha if REFIT_ALPHA is None else REFIT_ALPHA
    sweeps = cfg.code_sweeps if _params is None else 0
    if not (cfg.group_refit or sweeps):
        return q
    with _one_cpu_thread(dev):
        V = target_product(W0, prepared.H, prepared.drift, alpha)  # shared by every refit and sweep below

        def refit(q: Int4Weights) -> Int4Weights:
            if not cfg.group_refit:
                return q
            return refit_group_params(W0, prepared.H, q, drift=prepared.drift, alpha=alpha,
                                      float_zero=float_zero, dtype=dtype, damp=REFIT_DAMP, target=V)

        q = refit(q)
        for _ in range(sweeps):
            q = refit(coordinate_descent(W0, prepared.H, q, drift=prepared.drift, alpha=alpha, target=V))
    if cfg.group_refit and REFIT_PASSES > 1 and _params is None and cfg.act_order:
        for _ in range(REFIT_PASSES - 1):
            q = gptq_quantize(W0, None, cfg, prepared=prepared, _params=(q.scales, q.zeros))
    return q


@contextmanager
def _one_cpu_thread(device: torch.device):
    """On the CPU the column loop (thousands of small ops) and the K x K Cholesky inverse are
    faster on one thread: hand-offs cost more than they save, 10-100x more on a busy 2-core machine."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _column_loop(Wt, Hinv, codes, scales, zeros, group_of, G, B, static, param_args, hdiag=None, P=None,
                 lazy_perm=None) -> None:
    """Quantise the rows of ``Wt`` (weight columns) in order, compensating each error (fills codes/scales/zeros).

    ``hdiag``: per-column weights of the clip search for groups found here (None: no search).
    ``P``: GPTAQ's drift term (None: plain GPTQ).
    ``lazy_perm`` (act_order without ``static_groups``): the column order; each group's parameters are found
    when the loop first reaches one of its columns, from all its columns as updated by then.
    """
    K = Wt.shape[0]
    positions = None
    if lazy_perm is not None:
        where = torch.argsort(lazy_perm)  # column -> its row in Wt
        positions = [where[g * G:(g + 1) * G] for g in range(scales.shape[0])]
        found: set[int] = set()
    symmetric, bits = zeros is None, param_args[3]
    top = float(code_max(bits))
    offset = float(sym_offset(bits))
    # one row view per group, which sees the parameters written into it later
    scale_of, zero_of = list(scales.unbind(0)), None if symmetric else list(zeros.unbind(0))
    code = torch.empty(Wt.shape[1], device=Wt.device)
    dequant = torch.empty_like(code)
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = Wt[i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        pivots = Hinv1.diagonal().tolist()
        P1 = None if P is None else P[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, g = i1 + i, group_of[i1 + i]
            if positions is not None and g not in found:
                found.add(g)
                rows = positions[g]
                current = _rows_now(Wt, W1, Err1, Hinv, P, rows, i1, i, i2)
                scales[g], z = int4_params(current.t(), *param_args, clip_search=hdiag is not None,
                                           weight=None if hdiag is None else hdiag[lazy_perm[rows]])
                if zeros is not None:
                    zeros[g] = z
            if not static and col % G == 0:
                scales[g], z = int4_params(W1[i:i + G].t(), *param_args, clip_search=hdiag is not None,
                                           weight=None if hdiag is None else hdiag[col:col + G])
                if zeros is not None:
                    zeros[g] = z
            # int4_codes and int4_dequant, in place: the same arithmetic in half the tensor ops
            w, s, z = W1[i], scale_of[g], offset if symmetric else zero_of[g]
            torch.div(w, s, out=code).add_(z).round_().clamp_(0, top)
            codes[col] = code
            torch.sub(code, z, out=dequant).mul_(s)
            torch.sub(w, dequant, out=Err1[i]).div_(pivots[i])
            if P1 is not None:  # the column's share of the input drift, before its error moves it (row i: P1[i, i] = 0)
                W1[i + 1:].addr_(P1[i, i + 1:], w)
            W1[i:].addr_(Hinv1[i, i:], Err1[i], alpha=-1.0)  # push the error onto the columns still to do
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1.0)
        if P is not None:  # W1's rows now hold the dequantised columns, as in the reference
            Wt[i2:].addmm_(P[i1:i2, i2:].t(), W1)


def _rows_now(Wt, W1, Err1, Hinv, P, rows, i1, i, i2) -> torch.Tensor:
    """Rows ``rows`` (all at or after ``i1 + i``) of the weight columns as the loop has updated them so far:
    rows inside the block are current in ``W1``; later rows still miss the block's updates from rows i1..i1+i-1."""
    out = torch.empty(len(rows), Wt.shape[1], device=Wt.device)
    inside = rows < i2
    if inside.any():
        out[inside] = W1[rows[inside] - i1]
    later = rows[~inside]
    if len(later):
        part = Wt[later]
        if i:
            part = part - Hinv[i1:i1 + i, later].t() @ Err1[:i]
            if P is not None:
                part = part + P[i1:i1 + i, later].t() @ W1[:i]
        out[~inside] = part
    return out


def gptq_rows(w: torch.Tensor, H: torch.Tensor, scales: torch.Tensor, qmin: int, qmax: int, *, damp: float = 0.01,
              block_size: int = 128) -> torch.Tensor:
    """Signed codes ``[N, K]`` (int8) for ``w[N, K]`` on a fixed symmetric grid, chosen against ``H[K, K]``.

    ``scales[N, K / G]``: each group's step (groups of G columns), kept as
    they are; a weight stands for ``code * scale``, ``qmin <= code <= qmax``.
    The columns go in activation order (largest ``H`` diagonal first), each
    one's rounding error pushed onto the columns still to do as in
    ``gptq_quantize``.  For tables whose rows are read through a linear map of
    known inputs (an output head: H from its inputs), where rounding each
    weight to nearest ignores which directions those inputs use.
    """
    N, K = w.shape
    G = K // scales.shape[1]
    H = H.to(device=w.device, dtype=torch.float32).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(H.diagonal(), descending=True)
    with _one_cpu_thread(w.device):
        U = _inverse_cholesky(H[perm][:, perm], damp)
        Wt = w.detach().to(torch.float32).t()[perm].contiguous()  # a weight column is a contiguous row
        Wt[dead[perm]] = 0.0
        St = scales.to(torch.float32).t()[perm // G].contiguous()  # each column's step, one per row of w
        codes = torch.empty(K, N, dtype=torch.int8, device=w.device)
        for i1 in range(0, K, block_size):
            i2 = min(i1 + block_size, K)
            W1 = Wt[i1:i2].clone()
            Err1 = torch.empty_like(W1)
            for i in range(i2 - i1):
                c = (W1[i] / St[i1 + i]).round_().clamp_(qmin, qmax)
                codes[i1 + i] = c.to(torch.int8)
                Err1[i] = (W1[i] - c * St[i1 + i]) / U[i1 + i, i1 + i]
                W1[i:].addr_(U[i1 + i, i1 + i:i2], Err1[i], alpha=-1.0)
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1.0)
    return codes[torch.argsort(perm)].t().contiguous()
