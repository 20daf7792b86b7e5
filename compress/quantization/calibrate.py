"""Layer-by-layer GPTQ: capture each decoder layer's inputs, quantise, feed the result on.

Peak memory is the model plus one layer's working set (its inputs for all
calibration batches, the Hessians of the stage being quantised, and the
outputs of the layer's attention and MLP blocks kept for later passes).

Capture without exceptions: every layer's ``forward`` is replaced for one pass
of the backbone by a recorder that stores the call and hands its input
straight back, so the pass costs little more than the embeddings and no layer
runs.  The keyword arguments the backbone builds per layer (masks, rotary
embeddings; they differ per layer type in Gemma3) are kept per layer; the
hidden states are then computed for real, one quantised layer after another.

A layer is quantised in stages (q/k/v, o, MLP inputs, MLP output), each stage
on the inputs left by the ones before, so the layer is run once per stage.
Four things keep that close to one run: each stage's pass stops once its
modules have seen their inputs; the output of a block (attention, MLP) whose
weights are final is kept per batch and reused by later passes
(``_BlockMemo``); the first time such a block is needed, its output is its
last module (o_proj, down_proj) applied to the input that module's own
statistics pass kept, so q/k/v, attention and gate/up do not run again; and
modules fed the same tensor (q/k/v, gate/up) share one input product and are
recorded together, so a pass stops before the others run.  Those modules also
share one GPTQ run: their weights are stacked row-wise (``_quantise_jointly``).

GPTAQ targets also need the original model's inputs to each module: a second
stream of hidden states runs through a copy of each layer as it was before
quantisation, batch by batch beside the quantised one.  Nothing in that copy
changes, so each of its blocks runs about once per batch.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter
from compress.layer_calls import LayerCall, capture_layer_calls
from compress.quantization.gptq import PreparedHessian, fold_product, gptq_quantize, input_product, prepare_hessian
from compress.quantization.memory import release_freed_memory
from compress.quantization.plan import Target, set_module
from compress.quantization.quantizers import Int4Weights, Quantised

Convert = Callable[[Target, Optional[Quantised]], nn.Module]

# The kept inputs of o_proj / down_proj (``_BlockMemo.stash_input``) hold at most this many times the bytes of the
# calibration hidden states: SmolLM2's down_proj input is 2.67x (all kept); a model whose MLP is 4x wider keeps
# three quarters of the batches and runs the MLP for the rest.
STASH_PER_HIDDEN = 3.0
# With bfloat16 calibration the input products take bf16-rounded inputs too (False: float32 products beside bf16
# forwards, as before 2026-12-07; kept for measurement, benchmarks/peer_gptq.py row default-bf16-f32-products).
BF16_PRODUCTS = True


def _stages(adapter: Adapter, index: int, targets: list[Target], true_sequential: bool) -> list[list[Target]]:
    """Targets of one layer in the order their inputs become final: q/k/v, o, MLP inputs, MLP output."""
    if not true_sequential:
        return [targets]
    order = _data_flow(adapter, index)
    stage_of = {id(m): s for s, group in enumerate(order) for m in group}
    stages: list[list[Target]] = [[] for _ in range(len(order) + 1)]
    for t in targets:
        stages[stage_of.get(id(t.module), len(order))].append(t)
    return [s for s in stages if s]


def _data_flow(adapter: Adapter, index: int) -> list[list[nn.Module]]:
    """The layer's parts in the order their inputs become final: q/k/v, o, MLP inputs, MLP output."""
    parts = adapter.layer(index)
    return [[parts.q, parts.k, parts.v], [parts.o], list(parts.mlp_in), [parts.mlp_out]]


def _tails(adapter: Adapter, index: int, targets: list[Target], true_sequential: bool) -> dict[str, str]:
    """Blocks whose output may be their last module's (o_proj, down_proj), for ``_BlockMemo``; by name relative
    to the layer.  Only when the stages follow the data flow (every target is a part ``_stages`` places), so
    the input that module's statistics pass sees is final."""
    order = _data_flow(adapter, index)
    known = {id(m) for group in order for m in group}
    if not true_sequential or any(id(t.module) not in known for t in targets):
        return {}
    path = {id(m): n for n, m in adapter.layers[index].named_modules()}
    tails = {}
    for module in (order[1][0], order[3][0]):  # o, mlp_out
        name = path.get(id(module))
        block = None if name is None else _block_of(name)
        if block is not None:
            tails[block] = name
    return tails


class _StageInputsSeen(Exception):
    """Raised inside a layer once every module of the stage has seen its input: the rest of the layer is not needed."""


def _block_of(layer_relative: str) -> str | None:
    """The layer's direct child holding a module (attention, MLP), or None for a direct child itself."""
    head, dot, _ = layer_relative.partition(".")
    return head if dot else None


class _BlockMemo:
    """Per-batch outputs of a layer's sub-blocks (attention, MLP) that can no longer change.

    A sub-block is final once every target in it is quantised (or from the start,
    for the copy of the layer as it was).  Its input comes from earlier parts of
    the layer, final too, so its output on batch b is the same on every later
    pass over the layer: later passes take it from here instead of running
    attention or the MLP again.  A block whose inputs are recorded this pass
    (``needed``) always runs.  The first reuse of each block is checked against a
    real run; a mismatch turns the memo off for that block (same result, slower).

    ``tails`` (block -> its last module, o_proj / down_proj, relative to the
    layer): the input that module's statistics pass saw is kept (``stash_input``;
    it is final then), and once the block is final its output is that module
    applied to the kept input, without running the rest of the block (q/k/v and
    attention; gate/up).  Whether the block returns exactly that module's output
    (the very tensor, alone or beside Nones in a tuple) is checked on the first
    batch against a real run; a block that does more (BERT's residual and
    LayerNorm) runs as before.
    """

    def __init__(self, layer: nn.Module, names: set[str], final: bool = False,
                 tails: dict[str, str] | None = None, stash_bytes: int | None = None) -> None:
        self.batch = 0
        self.recording = True  # off for the last pass over a layer: nothing reads its outputs again
        self.needed: set[str] = set()
        self.final: set[str] = set(names) if final else set()
        self._layer = layer
        self._outputs: dict[tuple[str, int], Any] = {}
        self._checked: set[str] = set()
        self._off: set[str] = set()
        self._tails = dict(tails or {})
        self._tail_off: set[str] = set()  # blocks that return more than their tail's output
        self._tail_block = {module: block for block, module in self._tails.items()}
        self._stash: dict[tuple[str, int], torch.Tensor] = {}
        self._stash_room = stash_bytes  # None: no limit
        self._tail_shape: dict[str, tuple[int | None, int]] = {}  # block -> (place of the tail's output, length)
        self._blocks = {name: layer.get_submodule(name) for name in names}
        self._before = {name: block.__dict__.get("forward") for name, block in self._blocks.items()}
        for name, block in self._blocks.items():
            block.forward = self._wrap(name, block.forward)  # instance attribute, removed by close()

    def stash_input(self, module: str, x: torch.Tensor) -> None:
        """Keep ``x``, the input of ``module`` (relative to the layer) on the current batch, if it is a block's tail."""
        block = self._tail_block.get(module)
        if block is None or block in self._tail_off:
            return
        if self._stash_room is not None:
            if x.nbytes > self._stash_room:
                return  # no room: this batch runs the block for real
            self._stash_room -= x.nbytes
        self._stash[(block, self.batch)] = x.detach().clone()

    def _wrap(self, name: str, real: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            key = (name, self.batch)
            usable = name in self.final and name not in self._off
            if usable and name not in self.needed and key in self._outputs:
                if name in self._checked:
                    return _cloned(self._outputs[key])
                out = real(*args, **kwargs)
                self._checked.add(name)
                if not _same(out, self._outputs[key]):
                    self._off.add(name)
                    self._outputs = {k: v for k, v in self._outputs.items() if k[0] != name}
                return out
            if usable and name not in self.needed and key in self._stash and name not in self._tail_off:
                out = self._from_tail(name, key, real, args, kwargs)
            else:
                out = real(*args, **kwargs)
            if usable and self.recording:
                self._outputs[key] = _cloned(out)
            return out

        return forward

    def _from_tail(self, name: str, key: tuple[str, int], real: Callable, args: tuple, kwargs: dict) -> Any:
        """The block's output from its tail module and the kept input (checked against a real run the first time)."""
        x = self._unstash(key)
        tail = self._layer.get_submodule(self._tails[name])  # the quantised module (or its dense copy) now there
        if name in self._tail_shape:
            place, length = self._tail_shape[name]
            y = tail(x)
            return y if place is None else tuple(y if i == place else None for i in range(length))
        seen: list[torch.Tensor] = []
        handle = tail.register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            out = real(*args, **kwargs)
        finally:
            handle.remove()
        place = _place_of(out, seen[-1]) if len(seen) == 1 else False
        if place is not False and _same(tail(x), seen[-1]):
            self._tail_shape[name] = (place, 1 if place is None else len(out))
        else:
            self._tail_off.add(name)
            for k in [k for k in self._stash if k[0] == name]:
                self._unstash(k)
        return out

    def _unstash(self, key: tuple[str, int]) -> torch.Tensor:
        x = self._stash.pop(key)
        if self._stash_room is not None:
            self._stash_room += x.nbytes
        return x

    def close(self) -> None:
        """Put the blocks' own ``forward`` back and drop the kept outputs (twice is harmless)."""
        for name, block in self._blocks.items():
            if self._before[name] is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = self._before[name]
        self._outputs.clear()
        self._stash.clear()


def _place_of(out: Any, y: torch.Tensor) -> int | None | bool:
    """Where ``out`` holds ``y``: None if it is ``y``, i if a tuple with ``y`` at i and None elsewhere, else False."""
    if out is y:
        return None
    if type(out) is tuple and sum(o is y for o in out) == 1 and all(o is y or o is None for o in out):
        return next(i for i, o in enumerate(out) if o is y)
    return False


def _cloned(out: Any) -> Any:
    """A copy of a block's output (a tensor, or a tuple holding tensors and None): layers may add to it in place."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_cloned(o) for o in out)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


@torch.no_grad()
def _input_statistics(
    layer: nn.Module, stage: list[Target], hidden: list[torch.Tensor], calls: list[LayerCall], stop_early: bool = True,
    original: nn.Module | None = None, fp_hidden: list[torch.Tensor] | None = None,
    memo: _BlockMemo | None = None, fp_memo: _BlockMemo | None = None, needed_later: frozenset = frozenset(),
    fp_advance: bool = False, product_dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Input Hessians of the stage's GPTQ targets over every calibration batch, and GPTAQ's drift dXX^T.

    ``product_dtype``: each batch's input products from inputs rounded to it
    (``input_product``); the running sums stay float32.
    With ``stop_early`` each pass ends as soon as the last of these modules has
    been called (q/k/v need only the input norm, o_proj the attention).  With
    ``original`` (the layer before quantisation) and ``fp_hidden`` (the
    original model's hidden states), each batch first runs ``original`` to
    record what its modules see, for the drift of the targets that ask for
    GPTAQ; without them the drift dict is empty.  ``memo`` / ``fp_memo``: the
    two layers' ``_BlockMemo``; the original's pass then ends after the whole
    block of its last module, so the block's output is kept, unless a later
    stage records inputs inside that block again (``needed_later``: block names).
    ``fp_advance`` (the layer's last stage): the original's pass runs to the
    layer's end and its output replaces ``fp_hidden`` batch by batch.
    Modules fed the same tensor (q/k/v, gate/up) share one input product per batch
    and, after the first batch, are recorded together when the first of them is called.
    """
    wanted = [t for t in stage if t.config.gptq]
    drifting = [t for t in wanted if t.config.gptaq] if original is not None else []

    def zeros(t: Target) -> list:
        return [torch.zeros(t.module.in_features, t.module.in_features, device=t.module.weight.device), 0]

    stats = {t.name: zeros(t) for t in wanted}
    drift = {t.name: zeros(t) for t in drifting}
    fp_inputs: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    products: dict[tuple, tuple] = {}  # this batch's input products, by the identity of the tensors they came from

    def product(x: torch.Tensor, x_fp: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        key = (id(x), None if x_fp is None else id(x_fp))
        if key not in products:  # the tensors stay referenced here, so their ids cannot be reused this batch
            products[key] = (x, x_fp, *input_product(x, x_fp, product_dtype))
        return products[key][2:]

    path = {id(m): n for n, m in layer.named_modules()}
    module_of = {t.name: t.module for t in wanted}
    block = {t.name: _block_of(path[id(t.module)]) for t in wanted}
    # The original's pass may finish the block it is in (its output is then memoised for later passes).
    finish_block = {t.name: fp_memo is not None and block[t.name] is not None and block[t.name] not in needed_later
                    for t in drifting}

    # Targets fed the very tensor an earlier target got (q/k/v, gate/up) are learnt on the first batch; on
    # later batches the first of them records the whole group, so a pass can stop before the others run.
    first_batch = [True]
    group_of: dict[str, dict[str, list[str]]] = {"fp": {}, "q": {}}
    this_batch: dict[str, dict[str, torch.Tensor]] = {"fp": {}, "q": {}}

    def group(stream: str, name: str, x: torch.Tensor, done: Any) -> list[str]:
        if first_batch[0]:
            lead = next((n for n, t in this_batch[stream].items() if t is x), None)
            this_batch[stream][name] = x
            if lead is not None:
                group_of[stream].setdefault(lead, [lead]).append(name)
            return [name]
        return [n for n in group_of[stream].get(name, [name]) if n not in done]

    def record(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if name in fp_inputs:  # recorded with the first of its group
                return
            for n in group("fp", name, args[0], fp_inputs):
                fp_inputs[n] = args[0]
            if stop_early and not fp_advance and len(fp_inputs) == len(drift) and not finish_block[name]:
                raise _StageInputsSeen

        return pre_hook

    def block_done(module: nn.Module, args: tuple, out: Any) -> None:
        if stop_early and not fp_advance and len(fp_inputs) == len(drift):
            raise _StageInputsSeen

    def hook(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if name in seen:
                return
            for n in group("q", name, args[0], seen):
                if memo is not None:
                    memo.stash_input(path[id(module_of[n])], args[0])
                stats[n][1] = fold_product(stats[n][0], stats[n][1], *product(args[0]))
                if n in drift:
                    drift[n][1] = fold_product(drift[n][0], drift[n][1], *product(args[0], fp_inputs[n]))
                seen.add(n)
            if stop_early and len(seen) == len(stats):
                raise _StageInputsSeen

        return pre_hook

    handles = [original.get_submodule(path[id(t.module)]).register_forward_pre_hook(record(t.name)) for t in drifting]
    handles += [original.get_submodule(b).register_forward_hook(block_done)
                for b in {block[t.name] for t in drifting if finish_block[t.name]}]
    handles += [t.module.register_forward_pre_hook(hook(t.name)) for t in wanted]
    if memo is not None:
        memo.needed = {block[t.name] for t in wanted} - {None}
    if fp_memo is not None:
        fp_memo.needed = {block[t.name] for t in drifting if not finish_block[t.name]} - {None}
    try:
        if wanted:
            for b, (h, fp_h, call) in enumerate(zip(hidden, fp_hidden if drifting else hidden, calls)):
                seen.clear()
                fp_inputs.clear()
                products.clear()
                for m in (memo, fp_memo):
                    if m is not None:
                        m.batch = b
                advanced = None
                for module, states in ((original, fp_h), (layer, h)) if drifting else ((layer, h),):
                    try:
                        out = call.run(module, states)
                        if module is original and fp_advance:
                            advanced = out
                    except _StageInputsSeen:
                        pass
                if advanced is not None:  # after the quantised pass, which may read tensors recorded from fp_h
                    fp_h.copy_(advanced)
                first_batch[0] = False
                this_batch["fp"].clear()
                this_batch["q"].clear()
    finally:
        for handle in handles:
            handle.remove()
        products.clear()
        for m in (memo, fp_memo):
            if m is not None:
                m.needed = set()
    return {name: H for name, (H, _) in stats.items()}, {name: D for name, (D, _) in drift.items()}


def _prepared_groups(stage: list[Target], H: dict[str, torch.Tensor], drift: dict[str, torch.Tensor]) -> dict[str, str]:
    """For each GPTQ target, the first target of the stage with equal statistics and settings (q/k/v, gate/up):
    they share one Hessian preparation (damped inverse, order, GPTAQ's P)."""
    first: dict[str, str] = {}
    leaders: list[Target] = []
    for t in stage:
        if t.name not in H:
            continue
        for lead in leaders:
            same_drift = (t.name in drift) == (lead.name in drift) and (
                t.name not in drift or torch.equal(drift[t.name], drift[lead.name]))
            if (PreparedHessian.settings_of(t.config) == PreparedHessian.settings_of(lead.config) and same_drift
                    and torch.equal(H[t.name], H[lead.name])):
                first[t.name] = lead.name
                break
        else:
            leaders.append(t)
            first[t.name] = t.name
    return first


def _joint_groups(stage: list[Target], lead_of: dict[str, str]) -> list[list[Target]]:
    """The stage's GPTQ targets in groups quantised as one weight: equal statistics (``lead_of``), equal
    config and weight dtype.  GPTQ treats output rows independently, so q/k/v (gate/up) stacked row-wise
    give the codes each would get alone, in one column loop instead of three (two)."""
    groups: list[tuple[tuple, list[Target]]] = []  # configs hold dicts: compared, not hashed
    for t in stage:
        if t.name in lead_of:
            w = t.module.weight
            key = (lead_of[t.name], t.config, w.dtype, w.device, w.shape[1])
            match = next((members for k, members in groups if k == key), None)
            if match is None:
                groups.append((key, [t]))
            else:
                match.append(t)
    return [members for _, members in groups]


def _quantise_jointly(members: list[Target], prepared: PreparedHessian) -> dict[str, Quantised]:
    """GPTQ on the members' weights stacked row-wise; each member gets its own rows back."""
    weights = [t.module.weight for t in members]
    q = gptq_quantize(weights[0] if len(weights) == 1 else torch.cat(weights), None, members[0].config,
                      prepared=prepared)
    parts, start = {}, 0
    for t, w in zip(members, weights):
        rows = slice(start, start + w.shape[0])
        parts[t.name] = Int4Weights(codes=q.codes[rows].contiguous(), scales=q.scales[:, rows].contiguous(),
                                    zeros=None if q.zeros is None else q.zeros[:, rows].contiguous(),
                                    group_size=q.group_size, bits=q.bits)
        start += w.shape[0]
    return parts


def quantize_sequential(
    adapter: Adapter,
    layer_targets: list[list[Target]],
    data: torch.Tensor,
    convert: Convert,
    *,
    batch_size: int,
    true_sequential: bool,
    progress: bool = True,
    autocast_dtype: torch.dtype = torch.float32,
) -> None:
    """Quantise ``layer_targets[i]`` (the targets inside layer i) layer by layer, GPTQ where asked.

    ``convert(target, quantised)`` replaces a module; ``quantised`` is None
    when the target uses round-to-nearest.  ``autocast_dtype`` (bfloat16):
    the calibration passes' layer forwards run under autocast to it and the
    input products round their inputs to it (``BF16_PRODUCTS``); the hidden
    states between layers, the Hessians' running sums and GPTQ stay float32.
    """
    device = next(adapter.model.parameters()).device
    lowered = autocast_dtype != torch.float32
    product_dtype = autocast_dtype if BF16_PRODUCTS else torch.float32

    def forwards() -> Any:  # the layer passes only: prepare_hessian and the column loop run outside
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=lowered)

    batches = list(data.to(device).split(batch_size))
    hidden, calls = capture_layer_calls(adapter, batches)
    gptaq = any(t.config.gptq and t.config.gptaq for targets in layer_targets for t in targets)
    fp_hidden = [h.clone() for h in hidden] if gptaq else []  # the original model's hidden states (GPTAQ)
    hidden_bytes = sum(h.nbytes for h in hidden)
    bar = tqdm(range(adapter.num_layers), desc="GPTAQ" if gptaq else "GPTQ", unit="layer", disable=not progress)
    for i in bar:
        layer, packed = adapter.layers[i], []
        original = copy.deepcopy(layer) if gptaq else None
        prefix = adapter.layer_name(i) + "."
        block_of = {t.name: _block_of(t.name[len(prefix):]) for t in layer_targets[i]}
        blocks = set(block_of.values()) - {None}
        memo = _BlockMemo(layer, blocks, tails=_tails(adapter, i, layer_targets[i], true_sequential),
                          stash_bytes=int(STASH_PER_HIDDEN * hidden_bytes))
        fp_memo = _BlockMemo(original, blocks, final=True) if gptaq else None
        stages = _stages(adapter, i, layer_targets[i], true_sequential)
        fp_advanced = False
        try:
            for s, stage in enumerate(stages):
                later = frozenset(block_of[t.name] for st in stages[s + 1:] for t in st
                                  if t.config.gptq and t.config.gptaq) - {None}
                # The original's last pass over the layer also moves its hidden states on.
                advance = gptaq and s == len(stages) - 1 and any(t.config.gptq and t.config.gptaq for t in stage)
                if advance:
                    fp_advanced = True
                    fp_memo.recording = False  # nothing reads the original's blocks after its last pass
                with forwards():
                    H, drift = _input_statistics(layer, stage, hidden, calls[i], original=original,
                                                 fp_hidden=fp_hidden, memo=memo, fp_memo=fp_memo, needed_later=later,
                                                 fp_advance=advance, product_dtype=product_dtype)
                lead_of = _prepared_groups(stage, H, drift)
                prepared: dict[str, PreparedHessian] = {}
                quantised_of: dict[str, Quantised] = {}
                for members in _joint_groups(stage, lead_of):
                    lead = lead_of[members[0].name]
                    if lead not in prepared:
                        prepared[lead] = prepare_hessian(H[lead], members[0].config, drift=drift.get(lead),
                                                         overwrite_hessian=True)
                    quantised_of.update(_quantise_jointly(members, prepared[lead]))
                for t in stage:
                    dtype = t.module.weight.dtype
                    module = convert(t, quantised_of.pop(t.name, None))
                    # Later passes over this layer run a dense copy: the reference kernel would unpack
                    # the weights on every call.  Same weights; the packed module goes back below.
                    packed.append((t.name, module))
                    set_module(adapter.model, t.name, _dense_copy(module, dtype))
                del H, drift, prepared, quantised_of
                done = {name for name, _ in packed}
                memo.final |= {b for b in blocks if all(n in done for n, bl in block_of.items() if bl == b)}
                release_freed_memory()
            if fp_advanced:
                fp_memo.close()  # its outputs are not read again
            if i + 1 < adapter.num_layers:
                memo.recording = False
                with torch.no_grad(), forwards():
                    for b, (h, call) in enumerate(zip(hidden, calls[i])):
                        memo.batch = b
                        h.copy_(call.run(layer, h))  # in place: one copy of the calibration activations, not two
                    if gptaq and not fp_advanced:
                        fp_memo.recording = False
                        for b, (h, call) in enumerate(zip(fp_hidden, calls[i])):
                            fp_memo.batch = b
                            h.copy_(call.run(original, h))
        finally:
            memo.close()
            if fp_memo is not None:
                fp_memo.close()
            del original
            for name, module in packed:
                set_module(adapter.model, name, module)


def _dense_copy(module: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` holding a quantised module's dequantised weight (for calibration passes only)."""
    bias = getattr(module, "bias", None)
    dense = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
    dense.weight = nn.Parameter(module.dequantize_weight(dtype), requires_grad=False)
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return dense

