"""lm-evaluation-harness tasks on the model as compress-lm holds it (compress/tasks.py).

The local tasks in tests/lmeval_tasks/ need no download: a multiple-choice one
(mc.jsonl) and a rolling log-likelihood one over the news text compress-lm ships.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.cli import main
from compress.errors import CompressError
from compress.quantization import QuantConfig
from compress.tasks import TaskConfig, TaskError, TaskRunner, run_tasks, split_task_names
from tests.threads import one_torch_thread
from tests.tiny import tiny_model

TASKS_DIR = Path(__file__).parent / "lmeval_tasks"
LOCAL = TaskConfig(include_path=str(TASKS_DIR), limit=2)

try:
    import lm_eval  # noqa: F401
    HAVE_LM_EVAL = True
except ImportError:
    HAVE_LM_EVAL = False
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL, reason="lm-eval is not installed (pip install 'compress-lm[tasks]')")


@pytest.fixture(autouse=True)
def one_thread(request):
    if "smollm2" in request.node.name:  # the real model uses the threads it has
        yield
        return
    with one_torch_thread():
        yield


def _by_key(scores):
    return {(s.task, s.metric): s for s in scores}


def _choice_logliks(model, tokenizer, context, choices):
    """lm-eval's loglikelihood of each ' choice' after ``context``, computed here with plain torch."""
    out = []
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
        ids = torch.tensor([(ctx + cont)[:-1]])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        positions = range(len(ctx) - 1, len(ctx) - 1 + len(cont))
        out.append(sum(float(logp[p, t]) for p, t in zip(positions, cont)))
    return out


@needs_lm_eval
def test_multiple_choice_scores_are_the_models_own_logliks(tokenizer):
    model = tiny_model("llama", seed=3)
    scores = _by_key(run_tasks(model, tokenizer, "compress_mc", TaskConfig(include_path=str(TASKS_DIR), limit=6)))
    docs = [json.loads(line) for line in (TASKS_DIR / "mc.jsonl").read_text().splitlines()][:6]
    acc = acc_norm = 0
    for doc in docs:
        ll = _choice_logliks(model, tokenizer, f"Question: {doc['question']}\nAnswer:", doc["choices"])
        acc += max(range(len(ll)), key=ll.__getitem__) == doc["answer"]
        norm = [v / len(c) for v, c in zip(ll, doc["choices"])]  # lm-eval: characters of the choice
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == doc["answer"]
    assert scores[("compress_mc", "acc")].samples == 6
    assert scores[("compress_mc", "acc")].model == pytest.approx(acc / 6)
    assert scores[("compress_mc", "acc_norm")].model == pytest.approx(acc_norm / 6)
    assert scores[("compress_mc", "acc")].higher_is_better is True


def _dequantized_copy(model):
    """A float model holding exactly the packed model's dequantised weights (plain nn.Linear)."""
    from compress.io.exports.common import quantized_modules

    float_model = tiny_model("llama")
    float_model.load_state_dict({k: v for k, v in model.state_dict().items() if k in float_model.state_dict()}, strict=False)
    for name, m in quantized_modules(model).items():
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        linear.weight.data = m.dequantize_weight(torch.float32)
        float_model.set_submodule(name, linear)
    return float_model.eval()


@needs_lm_eval
def test_packed_model_runs_as_it_is_with_the_reference_beside_it(tokenizer):
    """The int4 model's packed modules are what lm-eval runs: the same scores as a float model holding its
    dequantised weights, different from the original's, which fill the reference column."""
    original = tiny_model("llama")
    packed = tiny_model("llama")
    compress.quantize(packed, QuantConfig(method="int4", group_size=32, progress=False))
    assert type(packed.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
    report = compress.evaluate(packed, None, original, tasks=["compress_mc", "compress_news_rolling"],
                               tokenizer=tokenizer, task_config=LOCAL, name="int4", reference_name="original")
    rows = _by_key(report.tasks)
    assert {t for t, _ in rows} == {"compress_mc", "compress_news_rolling"}
    alone = _by_key(run_tasks(_dequantized_copy(packed), tokenizer, "compress_mc,compress_news_rolling", LOCAL))
    ref_alone = _by_key(run_tasks(original, tokenizer, "compress_mc,compress_news_rolling", LOCAL))
    for key in ("compress_news_rolling", "word_perplexity"), ("compress_news_rolling", "byte_perplexity"), ("compress_mc", "acc"):
        assert rows[key].model == pytest.approx(alone[key].model, rel=1e-5)
        assert rows[key].reference == pytest.approx(ref_alone[key].model, rel=1e-9)
    bpp = ("compress_news_rolling", "byte_perplexity")
    assert rows[bpp].model != pytest.approx(rows[bpp].reference, rel=1e-6) and rows[bpp].samples == 2
    # one report: JSON and table carry the tasks, model beside reference
    data = report.to_dict()
    assert data["objective"] == "tasks" and any(r["metric"] == "byte_perplexity" and r["reference"] for r in data["tasks"])
    table = report.table()
    assert "lm-eval tasks:" in table and "int4" in table and "original" in table and "perplexity" not in table.split("lm-eval")[0]


@needs_lm_eval
def test_cli_eval_puts_tasks_and_perplexity_in_one_report(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", str(tiny_dir), "--data", str(text_file), "--seq-len", "16", "--max-sequences", "2",
                 "--reference", str(tiny_dir), "--tasks", "compress_mc", "--include-path", str(TASKS_DIR),
                 "--limit", "3", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["model"]["perplexity"] > 1 and report["kl_to_reference"] == pytest.approx(0, abs=1e-6)
    acc = [r for r in report["tasks"] if r["metric"] == "acc"][0]
    assert acc["samples"] == 3 and acc["model"] == acc["reference"]  # the model against itself
    assert "compress_mc" in capsys.readouterr().out


# -- bad input: one sentence each, exit 2 on the CLI ---------------------------------------

def test_lm_eval_missing_says_how_to_install(monkeypatch, tiny_dir, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(TaskError, match=r"lm-eval package, which is not installed; install it with pip install 'compress-lm\[tasks\]'"):
        TaskRunner(["compress_mc"])
    assert main(["eval", str(tiny_dir), "--tasks", "compress_mc"]) == 2
    assert "not installed" in capsys.readouterr().err


@needs_lm_eval
def test_unknown_task_is_named_with_a_suggestion(tiny_dir, capsys, monkeypatch):
    import lm_eval.tasks

    class LocalOnly(lm_eval.tasks.TaskManager):  # lm-eval's own ~15k tasks take half a minute to index: see the slow test
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalOnly)
    assert main(["eval", str(tiny_dir), "--tasks", "compress_mcq", "--include-path", str(TASKS_DIR)]) == 2
    err = capsys.readouterr().err
    assert "Unknown lm-eval task 'compress_mcq' (did you mean compress_mc?)" in err and "--include-path DIR" in err
    assert err.count("\n") == 1  # one line


@pytest.mark.slow
@needs_lm_eval
def test_unknown_task_among_lm_evals_own(tiny_dir):
    with pytest.raises(TaskError, match=r"Unknown lm-eval task 'hellaswagg' \(did you mean hellaswag"):
        TaskRunner("arc_easy,hellaswagg")


@needs_lm_eval
def test_task_needing_a_download_says_how_to_provide_it(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as without internet, without 25 s of retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices.text}}'\ndoc_to_target: 0\n")
    with pytest.raises(TaskError) as err:
        TaskRunner("hub_task", TaskConfig(include_path=str(tmp_path)))
    message = str(err.value)
    assert message.startswith("lm-eval task 'hub_task' needs its dataset 'allenai/ai2_arc' from the Hugging Face Hub")
    assert "--include-path DIR" in message and "dataset_path: json" in message


def test_task_options_without_tasks_and_bad_values_are_refused(tiny_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_dir), "--limit", "3"]) == 2
    assert "add --tasks" in capsys.readouterr().err
    with pytest.raises(TaskError, match="not a directory"):
        TaskConfig(include_path=str(tmp_path / "missing"))
    with pytest.raises(CompressError, match="limit must be"):
        TaskConfig(limit=0)
    with pytest.raises(TaskError, match="empty name"):
        split_task_names("compress_mc,,x")
    assert split_task_names(["a, b", "a"]) == ["a", "b"]


@needs_lm_eval
def test_evaluate_with_tasks_needs_the_tokenizer():
    with pytest.raises(CompressError, match="needs the model's tokenizer"):
        compress.evaluate(tiny_model("llama"), None, tasks=["compress_mc"], task_config=LOCAL)


@pytest.mark.slow
@needs_lm_eval
def test_smollm2_local_tasks_against_its_int4_self():
    """The real model, packed, through lm-eval; the original in the reference column."""
    model, tok = compress.load_model("smollm2-135m")
    original, _ = compress.load_model("smollm2-135m")
    compress.quantize(model, QuantConfig(method="int4", group_size=128, progress=False))
    scores = _by_key(run_tasks(model, tok, "compress_mc,compress_news_rolling",
                               TaskConfig(include_path=str(TASKS_DIR), limit=4, batch_size=8), reference=original))
    mc = scores[("compress_mc", "acc")]
    assert mc.samples == 4 and mc.reference >= 0.5  # SmolLM2 answers most of these easy questions
    wp = scores[("compress_news_rolling", "word_perplexity")]
    assert wp.samples == 4 and 1 < wp.reference < wp.model < wp.reference * 2.5  # RTN int4 g128 costs (1.6x on 24 articles)


def test_cli_eval_reads_the_built_in_news_text_by_name(tiny_dir, monkeypatch, capsys):
    import compress.data

    seen = []
    real = compress.data.load_text

    def spy(source, tokenizer, config=None, **kwargs):
        seen.append(source)
        return real(source, tokenizer, config, **kwargs)

    monkeypatch.setattr(compress, "load_text", spy)
    monkeypatch.setattr(compress.data, "load_text", spy)  # the two-domain report loads through compress.data
    assert main(["eval", str(tiny_dir), "--data", "news", "--seq-len", "16", "--max-sequences", "1"]) == 0
    assert seen == ["news"] and "perplexity" in capsys.readouterr().out
