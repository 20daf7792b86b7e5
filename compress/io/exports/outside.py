"""Loads an export with loaders that are not compress-lm's, in a fresh process; see ``verify``.

``verify`` runs this file's text with ``python -c`` and one JSON argument,
after blocking ``import compress``: it may use only torch, transformers,
safetensors, gguf and compressed-tensors.  Modes:

- ``transformers``: ``Auto*.from_pretrained(path)`` (hf, bitnet,
  compressed-tensors) or ``from_pretrained(path, gguf_file=...)`` (gguf).
- ``gptq``: no GPTQ kernel package installs beside torch 2.13 on the CPU, so
  the tensors are unpacked here from the documented AutoGPTQ layout
  (``qweight`` int32 ``[in*bits/32, out]``: for 4 bits eight codes per word
  along the input dimension, for 3 bits a dense bit stream whose codes
  straddle words, as AutoGPTQ's ``pack`` writes them; ``qzeros`` int32
  ``[groups, out*bits/32]`` packed the same way along the output dimension,
  storing zero - 1 in the "gptq" checkpoint format; ``scales``, ``g_idx``)
  into a stock transformers model.
- ``gguf_reader``: gguf's ``GGUFReader`` and ``dequantize`` read every tensor
  and the metadata (per-layer arrays included) into a stock transformers
  model, undoing llama.cpp's q/k row permutation; for files transformers'
  GGUF loader cannot rebuild (qwen3's head_dim, the per-layer ``deci``
  architecture).

It takes a JSON list of jobs, writes each one's logits to its ``out`` (safetensors) and prints
one JSON line per job.
"""
import json
import sys

if __name__ == "__main__":
    sys.modules["compress"] = None  # any import of compress-lm fails in the checking process

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _module_classes(model):
    counts = {}
    for m in model.modules():
        if not list(m.children()):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def _tokens(args, **kwargs):
    if not args.get("text"):
        return None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(args["path"], **kwargs)
    except Exception as err:  # noqa: BLE001 - reported, not fatal: the weights are what is checked
        return f"tokenizer did not load: {str(err).splitlines()[0][:200]}"
    return tok(args["text"])["input_ids"]


def load_transformers(args):
    auto = getattr(transformers, args["auto"])
    files = {"gguf_file": args["gguf_file"]} if args.get("gguf_file") else {}
    kwargs = dict(files)
    if args.get("dequantize"):  # see compressed_tensors.py: the default path cannot take packed zero points
        config = transformers.AutoConfig.from_pretrained(args["path"], trust_remote_code=args.get("remote", False))
        q = config.quantization_config
        q = q if isinstance(q, dict) else q.to_dict()
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig.from_dict({**q, "dequantize": True})
    model = auto.from_pretrained(args["path"], dtype=torch.float32, trust_remote_code=args.get("remote", False), **kwargs)
    return model, _tokens(args, **files)


def _weight_files(path):
    import pathlib

    root = pathlib.Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return sorted({root / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [root / "model.safetensors"]


def _unpack_stream(words, bits, count):
    """int32 words ``[R, W]`` read as one little-endian bit stream per row -> ``count`` codes of ``bits`` bits each."""
    stream = (words.to(torch.int64).unsqueeze(-1) >> torch.arange(32)) & 1  # [R, W, 32], bit b of word w
    stream = stream.reshape(words.shape[0], -1)[:, : count * bits].reshape(words.shape[0], count, bits)
    return (stream << torch.arange(bits)).sum(dim=-1)


def load_gptq(args):
    config = transformers.AutoConfig.from_pretrained(args["path"], trust_remote_code=args.get("remote", False))
    q = config.quantization_config
    q = q if isinstance(q, dict) else q.to_dict()
    assert q["quant_method"] == "gptq" and q["bits"] in (3, 4), q
    bits = q["bits"]
    del config.quantization_config
    state = {}
    for f in _weight_files(args["path"]):
        state.update(load_file(str(f)))
    v1 = q.get("checkpoint_format", "gptq") == "gptq"
    for name in [n for n in state if n.endswith(".qweight")]:
        base = name[: -len(".qweight")]
        qweight, qzeros = state.pop(base + ".qweight"), state.pop(base + ".qzeros")
        scales, g_idx = state.pop(base + ".scales").to(torch.float32), state.pop(base + ".g_idx").long()
        n, k = qweight.shape[1], g_idx.numel()
        codes = _unpack_stream(qweight.t(), bits, k).t()  # [in, out]: each output's stream runs down its column
        zeros = _unpack_stream(qzeros, bits, n)  # [groups, out]
        zeros = zeros + 1 if v1 else zeros
        weight = (codes - zeros[g_idx]).to(torch.float32) * scales[g_idx]
        state[base + ".weight"] = weight.t().contiguous()
    model = getattr(transformers, args["auto"]).from_config(config, trust_remote_code=args.get("remote", False), dtype=torch.float32)
    _load_state(model, state)
    return model, _tokens(args)


def _load_state(model, state):
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    if unexpected or set(missing) - tied - {"lm_head.weight"}:
        raise SystemExit(f"tensors do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_gguf_reader(args):
    import gguf

    path = f"{args['path']}/{args['gguf_file']}"
    reader = gguf.GGUFReader(path)

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    n_layer = int(field(f"{arch}.block_count"))

    def per_layer(key):
        v = field(f"{arch}.{key}")
        return [int(x) for x in v] if isinstance(v, list) else [int(v)] * n_layer

    heads, kv, ff = per_layer("attention.head_count"), per_layer("attention.head_count_kv"), per_layer("feed_forward_length")
    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    cls = getattr(transformers, args["base_class"])
    config = cls.config_class(
        vocab_size=int(field(f"{arch}.vocab_size", embd.shape[-1])),
        hidden_size=int(field(f"{arch}.embedding_length")),
        intermediate_size=ff[0], num_hidden_layers=n_layer,
        num_attention_heads=heads[0], num_key_value_heads=kv[0],
        head_dim=int(field(f"{arch}.attention.key_length")),
        rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(field(f"{arch}.rope.freq_base", 10000.0))},
        max_position_embeddings=int(field(f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names, mlp_bias="blk.0.ffn_up.bias" in names,
    )
    if len(set(heads)) > 1 or len(set(kv)) > 1 or len(set(ff)) > 1:
        # per-layer widths: the resizing model class a pruned hf export ships (torch + transformers only)
        config.compress_layer_widths = {"num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ff}
        namespace = {}
        exec(compile(open(args["modeling_file"]).read(), args["modeling_file"], "exec"), namespace)
        model = namespace[args["modeling_class"]](config)
    else:
        model = cls(config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    to_hf = {}
    for hf_name in model.state_dict():
        module, _, leaf = hf_name.rpartition(".")
        gguf_name = name_map.get_name(module)
        if gguf_name is not None:
            to_hf[f"{gguf_name}.{leaf}"] = hf_name
    state = {}
    for t in reader.tensors:
        w = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).copy()).to(torch.float32)
        if arch in ("llama", "deci") and (".attn_q." in t.name or ".attn_k." in t.name):
            layer = int(t.name.split(".")[1])
            n = heads[layer] if ".attn_q." in t.name else kv[layer]
            dim = w.shape[0] // n // 2  # undo convert_hf_to_gguf's permute, as transformers' GGUF reader does
            w = w.reshape(n, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
        if t.name not in to_hf:
            raise SystemExit(f"GGUF tensor {t.name} has no place in {type(model).__name__}")
        state[to_hf[t.name]] = w
    _load_state(model, state)
    return model, _tokens(args, gguf_file=args["gguf_file"])


def run_one(args):
    load = {"transformers": load_transformers, "gptq": load_gptq, "gguf_reader": load_gguf_reader}[args["mode"]]
    model, tokens = load(args)
    model.eval()
    ids = torch.tensor(args["ids"])
    with torch.no_grad():
        logits = model(input_ids=ids)[0]
    save_file({"logits": logits.to(torch.float32).contiguous()}, args["out"])
    return {"class": type(model).__name__, "modules": _module_classes(model), "tokens": tokens,
            "transformers": transformers.__version__}


def main():
    """One JSON list of jobs in, one JSON line per job out (an error is reported, not raised)."""
    for args in json.loads(sys.argv[1]):
        try:
            result = run_one(args)
        except BaseException as err:  # noqa: BLE001 - the parent turns it into one sentence
            lines = str(err).strip().splitlines() or [""]
            result = {"error": f"{type(err).__name__}: {lines[0][:300]}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
