"""A checkpoint with packed weights never runs in stock transformers with random layers."""
import json
import subprocess
import sys

import torch

from compress.io import load, save
from compress.quantization import QuantConfig, quantize
from tests.tiny import as_stored, tiny_model, tiny_tokenizer

IDS = [[5, 17, 42, 99, 7, 3]]

_SCRIPT = """
import sys, torch, transformers
path = sys.argv[1]
for remote, block in ((False, False), (True, False), (True, True)):
    if block:  # as if compress-lm were not installed
        for name in [n for n in sys.modules if n == "compress" or n.startswith("compress.")]:
            del sys.modules[name]
        sys.modules["compress"] = None
    try:
        m = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote)
    except Exception as err:
        print("REFUSED", remote, type(err).__name__, str(err).replace(chr(10), " "))
        continue
    with torch.no_grad():
        print("LOADED", remote, m(input_ids=torch.tensor(%s)).logits.flatten()[:8].tolist())
"""


def _stock(path):
    res = subprocess.run([sys.executable, "-c", _SCRIPT % IDS, str(path)], capture_output=True, text=True,
                         cwd=path.parent, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    return [line for line in res.stdout.splitlines() if line.startswith(("REFUSED", "LOADED"))]


def test_quantised_checkpoint_refuses_stock_layers_or_loads_through_compress(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False))
    save(model, tmp_path / "ck", tiny_tokenizer())
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == "compress-lm"
    with torch.no_grad():
        expected = as_stored(model)(input_ids=torch.tensor(IDS)).logits.flatten()[:8]
    # compress-lm's own loader still reads it
    again = load(tmp_path / "ck").model
    with torch.no_grad():
        assert torch.equal(again(input_ids=torch.tensor(IDS)).logits.flatten()[:8], expected)

    plain, remote, without = _stock(tmp_path / "ck")
    # without trust_remote_code transformers refuses (our model type is not one of its own) ...
    assert plain.startswith("REFUSED False ValueError") and "contains custom code" in plain
    # ... with it, the checkpoint's module loads the model through compress-lm: the same logits
    assert remote.startswith("LOADED True")
    assert torch.allclose(torch.tensor(json.loads(remote.split(" ", 2)[2])), expected, atol=1e-5)
    # ... and without compress-lm installed it says what to do instead
    assert without.startswith("REFUSED True ImportError") and "is a compress-lm checkpoint with packed weights" in without
    assert "compress.load" in without and "--format hf" in without


def test_float_checkpoint_still_loads_in_stock_transformers(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == "llama"
    assert not (tmp_path / "ck" / "compress_lm_checkpoint.py").exists()
