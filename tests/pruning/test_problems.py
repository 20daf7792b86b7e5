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
    assert f"drop_layers={layers} would leave none of the {layers} layers; drop fewer." in found
    assert "calib_seq_len=128 is longer than the text's seq_len=64; lower calib_seq_len or raise text seq_len." in found


def test_an_unreachable_sparsity_names_the_most_that_can_go():
    [message] = problems(gqa_model(), PruneConfig(sparsity=0.99))
    assert message.startswith("sparsity 0.99 cannot be reached; at most ")


def test_protect_layers_problems_are_listed_without_a_budget_sentence():
    model = gqa_model()
    assert problems(model, PruneConfig(sparsity=0.5, protect_layers=(1, 4, 7))) == [
        "protect_layers names layer(s) [4, 7], but the model has 4 decoder layers (0-3); give indices in that range."]
    [message] = problems(model, PruneConfig(sparsity=0.5, protect_layers=(0, 1, 2)))
    assert message.endswith("while protect_layers [0, 1, 2] keep their full width; lower sparsity or round_to, "
                            "or protect fewer layers.")


def test_the_pruner_raises_exactly_the_problems_listed():
    """One source of truth: prune() refuses with the sentences problems() lists, all of them, before any weight moves."""
    import pytest

    from compress.errors import CompressError
    from compress.pruning import prune

    cases = [PruneConfig(sparsity=0.3, protect_layers=(0, 1, 2, 3), method="uniform", importance="magnitude"),
             PruneConfig(sparsity=0.99, method="uniform", importance="magnitude", round_to=64),
             PruneConfig(sparsity=0.3, drop_layers=9, method="uniform", importance="magnitude")]
    for cfg in cases:
        model = gqa_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        found = problems(model, cfg)
        assert found
        with pytest.raises(CompressError) as err:
            prune(model, cfg)
        assert str(err.value) == " ".join(found)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bert = gqa_model("bert")
    [taylor] = problems(bert, PruneConfig(sparsity=0.3, method="uniform", importance="taylor"))
    assert "returns no loss, so Taylor importance cannot be computed" in taylor
