"""Data of the local lm-eval tasks in this directory (read by their ``custom_dataset`` functions).

Nothing here downloads: the questions are in mc.jsonl beside this file, and the
news articles come from the package compress-lm already reads its unseen-domain
text from (``compress.data.unseen_documents``).
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _dataset(rows):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows)})


def multiple_choice(**_):
    rows = [json.loads(line) for line in (HERE / "mc.jsonl").read_text("utf-8").splitlines() if line.strip()]
    return _dataset(rows)


def news(**_):
    from compress.data import unseen_documents

    return _dataset([{"id": name, "text": text} for name, text in unseen_documents()])
