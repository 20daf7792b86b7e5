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


def test_prune_and_recover_stay_callable_after_their_subpackages_load():
    import compress
    import compress.prune.config  # noqa: F401  (binds compress.prune to the subpackage)
    import compress.recover.config  # noqa: F401
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    report = compress.prune(model, 0.2, method="uniform", importance="magnitude", progress=False)
    assert report.params_after < report.params_before
    assert model.config.compress_methods[-1]["step"] == "prune"
    assert compress.prune.PruneConfig is not None and callable(compress.recover)
