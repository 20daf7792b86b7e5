"""Quantised embeddings and output head: int8 per row, int4 in groups along the row.

    from compress.quantization.embedding import quantize_embeddings
    quantize_embeddings(model, "int8")            # or "int4" (group_size=32)

``QuantEmbedding`` stores ``qdata`` and ``scales`` in one of the row formats
of :mod:`compress.kernels.formats` (``Int8RowsFormat``, ``Int4RowsFormat``;
the layouts are written down in ``formats/rows.py``):

- int8: ``s = max|row| / 127`` (rounded up to the scale dtype so nothing clips);
- int4: groups of G along the row, ``s = max|group| / 7``.

As an embedding (``role="embedding"``) the forward gathers the looked-up
rows and dequantises only those.  As an output head (``role="head"``, an
untied ``lm_head``) it computes logits in vocabulary chunks, dequantising
one chunk at a time.  A tied pair is quantised once: the head becomes a
``TiedQuantHead`` that reads the embedding's packed data and stores
nothing of its own, so the checkpoint holds one tensor.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from compress.kernels.formats import RowFormat, embedding_format, pack_int4_rows, unpack_int4_rows
from compress.packed import PackedModule
from compress.quantization.config import EMBEDDING_FORMATS, QuantError

__all__ = ["QuantEmbedding", "TiedQuantHead", "quantize_embeddings", "quantize_rows", "pack_int4_rows",
           "unpack_int4_rows", "embedding_problems", "predicted_embeddings", "head_logits", "head_input_hessian"]

HEAD_CHUNK_ROWS = 8192  # vocabulary rows dequantised at once by the head
# GPTQ's damping of the head's input Hessian (a fraction of its mean diagonal): on SmolLM2-135M's int4 table
# 0.1 beat 0.01 and 1 on held-out windows of the calibration text (benchmarks/embedding_domains.py)
HEAD_DAMP = 0.1
HEAD_CALIBRATION_SEQUENCES = 32  # calibration sequences whose head inputs make that Hessian (at most)


def _stored_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded up to ``dtype`` (so the largest weight never clips), at least its smallest normal."""
    x = x.to(torch.float32).clamp(min=torch.finfo(dtype).tiny)
    y = x.to(dtype)
    y = torch.where(y.to(torch.float32) < x, torch.nextafter(y, torch.full_like(y, float("inf"))), y)
    return y


def quantize_rows(w: torch.Tensor, bits: int, group_size: int, scale_dtype: torch.dtype = torch.float16,
                  hessian: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``[V, D]`` -> (signed integer codes int8 ``[V, D]``, scales ``[V, D/G]`` in ``scale_dtype``).

    int8: one group per row (``group_size`` = D).  Without ``hessian`` each
    weight is rounded to nearest (its error at most half a step).  With the
    output head's input Hessian ``[D, D]`` (``head_input_hessian``) the codes
    on the same grid are chosen by GPTQ against it, so the logits move less:
    on SmolLM2-135M's tied table at int4 the KL to the original fell from
    0.176 to 0.073 on unseen news text (README, Checkpoint size).
    """
    V, D = w.shape
    if D % group_size:
        raise QuantError(f"group size {group_size} does not divide the embedding width {D}; use a divisor of {D}.")
    fmt = _row_format(bits, group_size, D)
    top, low = fmt.qmax, fmt.qmin
    g = w.detach().to(torch.float32).reshape(V, D // group_size, group_size)
    scales = _stored_up(g.abs().amax(dim=-1) / top, scale_dtype)
    if hessian is not None:
        from compress.quantization.gptq import gptq_rows

        return gptq_rows(w, hessian, scales, low, top, damp=HEAD_DAMP), scales
    codes = (g / scales.to(torch.float32)[..., None]).round().clamp(low, top).to(torch.int8)
    return codes.reshape(V, D), scales


def _row_format(bits: int, group_size: Optional[int], D: int) -> RowFormat:
    """The row format of ``bits`` (8 or 4) for a table of width ``D``."""
    return embedding_format(f"int{bits}", group_size, D)


class QuantEmbedding(PackedModule):
    """An ``nn.Embedding`` (or untied output head) with int8 / int4 rows; ``format`` is the row layout."""

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, *, bits: int = 8, group_size: Optional[int] = None,
                 padding_idx: Optional[int] = None, scale_dtype: torch.dtype | str = torch.float16,
                 role: str = "embedding", embed_scale: Optional[float] = None, device: Any = None) -> None:
        super().__init__()
        if isinstance(scale_dtype, str):
            scale_dtype = getattr(torch, scale_dtype)
        if bits not in (4, 8):
            raise QuantError(f"embedding bits must be 4 or 8, got {bits!r}.")
        if role not in ("embedding", "head"):
            raise QuantError(f"role must be 'embedding' or 'head', got {role!r}.")
        self.format: RowFormat = _row_format(bits, group_size, embedding_dim)
        problem = self.format.group_problem(embedding_dim, self.format.group_size)
        if problem:
            raise QuantError(f"{problem}; use a divisor of {embedding_dim} (32 by default).")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.role = padding_idx, role
        self.embed_scale = None if embed_scale is None else float(embed_scale)  # Gemma3 scales looked-up rows
        for name, t in self.format.buffers(num_embeddings, embedding_dim, scale_dtype, device).items():
            self.register_buffer(name, t)
        # empty; model.to(dtype) moves it, so outputs follow the model's compute dtype
        probe_device = None if str(device) == "meta" else device  # an empty tensor: a skeleton need not load it
        self.register_buffer("compute", torch.empty(0, dtype=torch.float32, device=probe_device), persistent=False)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, group_size: int = 32, *, padding_idx: Optional[int] = None,
                    scale_dtype: torch.dtype = torch.float16, role: str = "embedding",
                    embed_scale: Optional[float] = None, hessian: Optional[torch.Tensor] = None) -> "QuantEmbedding":
        """``hessian``: the output head's input Hessian, to choose the codes by GPTQ (see ``quantize_rows``)."""
        V, D = weight.shape
        m = cls(V, D, bits=bits, group_size=group_size, padding_idx=padding_idx, scale_dtype=scale_dtype, role=role,
                embed_scale=embed_scale, device=weight.device)
        codes, scales = quantize_rows(weight, bits, m.group_size, scale_dtype, hessian)
        with torch.no_grad():
            m.qdata.copy_(m.format.pack(codes))
            m.scales.copy_(scales)
            m.compute = torch.empty(0, dtype=weight.dtype, device=weight.device)
        return m

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts float buffers; the scales keep their stored dtype, only their device follows
        old = self.scales
        super()._apply(fn, recurse)
        if self.scales.dtype != old.dtype:
            self.scales = old.to(device=self.scales.device)
        return self

    # -- the format's fields, as attributes (checkpoints, exports and reports read them)
    @property
    def bits(self) -> int:
        return self.format.bits

    @property
    def group_size(self) -> int:
        return self.format.group_size

    # -- use -----------------------------------------------------------------
    def codes(self, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Signed integer codes (int8) of ``rows`` (all when None)."""
        return self.format.unpack(self.qdata if rows is None else self.qdata[rows])

    def dequantize_rows(self, rows: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float rows ``rows`` (any integer shape; all rows when None) stand for: ``[..., D]``."""
        s = self.scales if rows is None else self.scales[rows]
        return self.format.dequantize_codes(self.codes(rows), s, dtype or self.compute.dtype)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.dequantize_rows(None, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised ``[V, D]`` table (a new tensor each time; for tools that read ``.weight``)."""
        return self.dequantize_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.role == "head":
            return head_logits(self, x)
        rows = self.dequantize_rows(x)
        if self.embed_scale is not None:  # as Gemma3TextScaledWordEmbedding: a float32 scalar cast to the rows' dtype
            rows = rows * torch.tensor(self.embed_scale, dtype=torch.float32).to(rows.dtype)
        return rows

    def packed_bytes(self) -> int:
        return self.qdata.nbytes + self.scales.nbytes

    def logical_numel(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def bits_per_weight(self) -> float:
        return 8.0 * self.packed_bytes() / self.logical_numel()

    def label(self) -> str:
        return self.format.label()

    def describe(self) -> dict[str, Any]:
        """JSON-able description, enough to rebuild the empty module (checkpoint manifests)."""
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
                "group_size": self.group_size, "padding_idx": self.padding_idx, "role": self.role,
                "embed_scale": self.embed_scale,
                "scale_dtype": str(self.scales.dtype).removeprefix("torch.")}

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, {self.label()}, {self.role}, "
                f"{self.bits_per_weight():.2f} bits/weight")


def head_logits(table: QuantEmbedding, x: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` with ``W`` the dequantised table, one chunk of vocabulary rows at a time."""
    dtype = x.dtype
    out = []
    for start in range(0, table.num_embeddings, HEAD_CHUNK_ROWS):
        rows = torch.arange(start, min(start + HEAD_CHUNK_ROWS, table.num_embeddings), device=x.device)
        out.append(torch.nn.functional.linear(x, table.dequantize_rows(rows, dtype)))
    return torch.cat(out, dim=-1)


class TiedQuantHead(PackedModule):
    """The output head of a tied pair: logits from the input embedding's packed data, nothing stored of its own."""

    kind = "tied_head"

    def __init__(self, embedding: QuantEmbedding) -> None:
        super().__init__()
        object.__setattr__(self, "_table", embedding)  # not a submodule: its tensors are stored once, under the embedding
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings

    @property
    def table(self) -> QuantEmbedding:
        return self._table

    @property
    def weight(self) -> torch.Tensor:
        return self._table.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_logits(self._table, x)

    def extra_repr(self) -> str:
        return f"tied to the quantised input embedding ({self._table.label()})"


# -- quantising a model ---------------------------------------------------------

def _head(model: nn.Module) -> tuple[Optional[str], Optional[nn.Module]]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None, None
    name = next((n for n, m in model.named_modules() if m is head), None)
    return name, head


def _embed_scale(embed: nn.Module) -> Optional[float]:
    """The scalar a scaled word embedding (Gemma3's) multiplies looked-up rows by; None for a plain one."""
    scale = getattr(embed, "embed_scale", None)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return float(scale)
    return float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else None


def embedding_problems(model: nn.Module, kind: Optional[str], group_size: int) -> list[str]:
    """Every reason the embeddings (and an untied head) cannot be quantised as ``kind``; empty when they can."""
    if kind is None:
        return []
    if kind not in EMBEDDING_FORMATS:
        return [f"embeddings must be one of {', '.join(EMBEDDING_FORMATS)} or None, got {kind!r}"]
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is None or isinstance(embed, QuantEmbedding):
        return ["the model has no float input embedding to quantise (it may already be quantised)"] if embed is None else []
    if not isinstance(embed, nn.Embedding) or (type(embed) is not nn.Embedding and _embed_scale(embed) is None):
        return [f"the input embedding is a {type(embed).__name__}, whose lookup is not a plain nn.Embedding's; "
                f"quantise without embeddings="]
    out = []
    D = embed.embedding_dim
    fmt = embedding_format(kind, group_size, D)
    if fmt.group_problem(D, fmt.group_size):
        out.append(f"embedding_group_size {group_size} does not divide the embedding width {D}; use a divisor of {D} "
                   f"(32 by default)")
    name, head = _head(model)
    if head is not None and not isinstance(head, (QuantEmbedding, TiedQuantHead)):
        tied = getattr(head, "weight", None) is embed.weight
        shared = not tied and isinstance(getattr(head, "weight", None), torch.Tensor) and \
            head.weight.untyped_storage().data_ptr() == embed.weight.untyped_storage().data_ptr()
        if shared:
            out.append(f"{name} shares storage with the input embedding without being a plain tie (same tensor); "
                       f"tie it (model.tie_weights()) or quantise without embeddings=")
        if not isinstance(head, nn.Linear):
            out.append(f"{name} is a {type(head).__name__}, not an nn.Linear; quantise without embeddings=")
        elif head.bias is not None:
            out.append(f"{name} has a bias, which a quantised head does not store; quantise without embeddings=")
        elif tied and tuple(head.weight.shape) != tuple(embed.weight.shape):
            out.append(f"{name} is tied but shaped {tuple(head.weight.shape)}; quantise without embeddings=")
    return out


def predicted_embeddings(model: nn.Module, kind: str, group_size: int = 32,
                         scale_dtype: torch.dtype = torch.float16) -> None:
    """Put empty (meta) quantised embedding modules where ``quantize_embeddings`` would: pre-flight checks of a skeleton."""
    embed = model.get_input_embeddings()
    if not isinstance(embed, nn.Embedding):
        return
    bits = embedding_format(kind, None, 1).bits
    name_e = next(n for n, m in model.named_modules() if m is embed)
    head_name, head = _head(model)
    tied = head is not None and getattr(head, "weight", None) is embed.weight
    q = QuantEmbedding(embed.num_embeddings, embed.embedding_dim, bits=bits, group_size=group_size,
                       padding_idx=embed.padding_idx, scale_dtype=scale_dtype, embed_scale=_embed_scale(embed),
                       device="meta")
    model.set_submodule(name_e, q)
    if isinstance(head, nn.Linear):
        model.set_submodule(head_name, TiedQuantHead(q) if tied else QuantEmbedding(
            head.out_features, head.in_features, bits=bits, group_size=group_size, scale_dtype=scale_dtype,
            role="head", device="meta"))


@torch.no_grad()
def quantize_embeddings(model: nn.Module, kind: str, group_size: int = 32,
                        scale_dtype: torch.dtype = torch.float16,
                        head_hessian: Optional[torch.Tensor] = None) -> list[tuple[str, str, int]]:
    """Replace the input embedding (and the output head, tied or not) with quantised ones, in place.

    ``head_hessian`` (``head_input_hessian``): the head's rows (a tied
    table, or an untied head; an untied input embedding is read row by row
    and keeps round to nearest) get GPTQ codes against it.
    Returns ``(module name, label, packed bytes)`` per replaced module.
    Raises ``QuantError`` (one sentence per problem) before changing anything.
    """
    problems = embedding_problems(model, kind, group_size)
    if problems:
        raise QuantError("Cannot quantise the embeddings: " + "; ".join(problems) + ".")
    bits = embedding_format(kind, None, 1).bits
    embed = model.get_input_embeddings()
    done: list[tuple[str, str, int]] = []
    if isinstance(embed, QuantEmbedding):
        return done
    name_e = next(n for n, m in model.named_modules() if m is embed)
    head_name, head = _head(model)
    tied = head is not None and getattr(head, "weight", None) is embed.weight
    head_linear = isinstance(head, nn.Linear)
    q = QuantEmbedding.from_weight(embed.weight, bits, group_size, padding_idx=embed.padding_idx, scale_dtype=scale_dtype,
                                   embed_scale=_embed_scale(embed), hessian=head_hessian if tied and head_linear else None)
    model.set_submodule(name_e, q)
    done.append((name_e, q.label(), q.packed_bytes()))
    if head_linear:
        if tied:
            model.set_submodule(head_name, TiedQuantHead(q))
            done.append((head_name, f"{q.label()} (tied to {name_e})", 0))
        else:
            h = QuantEmbedding.from_weight(head.weight, bits, group_size, scale_dtype=scale_dtype, role="head",
                                           hessian=head_hessian)
            model.set_submodule(head_name, h)
            done.append((head_name, h.label(), h.packed_bytes()))
    return done


@torch.no_grad()
def head_input_hessian(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> Optional[torch.Tensor]:
    """``X^T X / n`` of the output head's inputs over the token ids ``[n, seq_len]``; None without a linear head.

    The model runs as it is now (after its linears are quantised: the inputs
    the deployed head will see, as GPTQ's Hessians are made).
    """
    from compress.arch import adapter_for
    from compress.output_kl import forward_kwargs

    _, head = _head(model)
    if not isinstance(head, nn.Linear) or ids is None or len(ids) == 0:
        return None
    D = head.in_features
    H = torch.zeros(D, D, dtype=torch.float32, device=head.weight.device)
    count = [0]

    def collect(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, D).to(torch.float32)
        H.addmm_(x.t(), x)
        count[0] += x.shape[0]

    was_training = model.training
    model.eval()
    hook = head.register_forward_pre_hook(collect)
    try:
        kwargs = forward_kwargs(adapter_for(model))
        for batch in ids.split(batch_size):
            model(input_ids=batch.to(head.weight.device), **kwargs)
    finally:
        hook.remove()
        model.train(was_training)
    return H / max(count[0], 1)
