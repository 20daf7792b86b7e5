"""The native format's safety items that tests/io/test_checkpoint.py does not cover: a save killed
from outside, and a checkpoint carrying code."""
import json
import subprocess
import sys
import textwrap

import torch

from compress.io import load, save
from compress.io.atomic import sha256_file
from compress.io.exports import export
from tests.tiny import as_stored, tiny_model

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def test_a_save_killed_after_its_first_shard_leaves_the_old_checkpoint_loadable(tmp_path):
    old = tiny_model("llama", seed=0)
    save(old, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[2])!r})
        import safetensors.torch
        import compress.io.checkpoint as ckpt
        from tests.tiny import tiny_model

        real = safetensors.torch.save_file
        written = []

        def save_then_die(*args, **kwargs):
            real(*args, **kwargs)
            written.append(args[1])
            if len(written) == 1:
                print("FIRST SHARD", written[0], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        safetensors.torch.save_file = save_then_die
        ckpt.save(tiny_model("llama", seed=1), {str(tmp_path / 'ck')!r}, overwrite=True, max_shard_bytes=20_000)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == -9 and "FIRST SHARD" in res.stdout, res.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "ck").model(input_ids=IDS).logits, as_stored(old)(input_ids=IDS).logits)


def test_loading_never_runs_code_that_a_checkpoint_carries(tmp_path):
    export(tiny_model("llama"), None, tmp_path / "ck", "native")
    marker = tmp_path / "ran"
    (tmp_path / "ck" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.Config", "AutoModelForCausalLM": "modeling_evil.Model"}
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    # a consistent manifest, as someone planting the code would write it
    manifest = json.loads((tmp_path / "ck" / "compress.json").read_text())
    for name in ("config.json", "modeling_evil.py"):
        f = tmp_path / "ck" / name
        manifest["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (tmp_path / "ck" / "compress.json").write_text(json.dumps(manifest))
    model = load(tmp_path / "ck").model
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()
