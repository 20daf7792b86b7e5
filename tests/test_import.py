import subprocess
import sys


def test_import_is_light_and_has_no_side_effects():
    code = (
        "import sys, compress, compress.kernels;"
        "heavy = [m for m in ('transformers', 'triton') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_names_resolve():
    import compress

    for name in ("load_model", "load_text", "evaluate", "adapter_for", "prune", "quantize", "recover", "save", "load", "run", "export"):
        assert callable(getattr(compress, name)), name
    from compress.io.exports import export

    assert compress.export is export


def test_the_verbs_are_functions_after_every_package_loads():
    import types

    import compress
    import compress.pruning.config  # noqa: F401  (packages are nouns: no name shared with a verb)
    import compress.quantization.config  # noqa: F401
    import compress.recovery.config  # noqa: F401
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    report = compress.prune(model, 0.2, method="uniform", importance="magnitude", progress=False)
    assert report.params_after < report.params_before
    assert model.config.compress_methods[-1]["step"] == "prune"
    for verb in ("prune", "quantize", "recover", "save", "load", "run", "evaluate", "export"):
        assert isinstance(getattr(compress, verb), types.FunctionType), verb
    assert compress.PruneConfig is compress.pruning.PruneConfig


def test_every_public_name_resolves():
    import compress

    for name in compress.__all__:
        assert getattr(compress, name) is not None, name
