"""Run a whole recipe (prune, recover, quantize, export) and print its report.

    python examples/run_recipe.py [RECIPE] [OUTPUT_DIR]

RECIPE is a built-in recipe (default, small-fast, smallest) or a YAML file; see
`compress-lm run --recipe default --show` for every option spelled out.  Running
the script again resumes: finished stages are skipped, an interrupted recovery
continues from its last training checkpoint.
"""
import sys

import compress
from compress.pipeline import Export, Prune, Quantize, Recipe, Recover
from compress.pruning import PruneConfig
from compress.quantization import QuantConfig
from compress.recovery import RecoverConfig

if len(sys.argv) > 1:
    recipe = sys.argv[1]
else:  # the same as a YAML file, in Python
    recipe = Recipe(
        name="example",
        stages=(
            Prune(PruneConfig(sparsity=0.2, round_to=64, step=0.1, calib_samples=16)),
            Recover(RecoverConfig(steps=8, batch_size=4, eval_every=0, checkpoint_every=4)),
            Quantize(QuantConfig(method="int4", group_size=64)),
            Export(("native",)),
        ),
    )
out = sys.argv[2] if len(sys.argv) > 2 else None  # default: runs/<recipe name>

report = compress.run("smollm2-135m", recipe, out)  # prints progress, the table and the chart paths
print(f"final checkpoint: {report.final_checkpoint}")
