"""pruning.problems: every reason a prune cannot run, as sentences, without touching a weight."""
import torch

from compress.pruning import PruneConfig, problems
from tests.pruning.helpers import gqa_model


def test_a_prunable_model_has_no_problems_and_keeps_its_weights():
    model = gqa_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert problems(model, PruneConfig(sparsity=0.3), seq_len=64) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_problems_are_listed_together():
    model = gqa_model()
    layers = model.config.num_hidden_layers
    found = problems(model, PruneConfig(sparsity=0.95, drop_layers=layers, calib_seq_len=128), seq_len=64)
    assert f"drop_layers={layers} would leave none of the {layers} layers." in found
    assert "calib_seq_len=128 is longer than the text's seq_len=64; lower calib_seq_len or raise text seq_len." in found


def test_an_unreachable_sparsity_names_the_most_that_can_go():
    [message] = problems(gqa_model(), PruneConfig(sparsity=0.99))
    assert message.startswith("sparsity 0.99 cannot be reached; at most ")
