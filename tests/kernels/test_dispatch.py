"""quant_matmul: kernel choice, CPU fallback, one warning on Triton failure, custom op under torch.compile."""
from __future__ import annotations

import warnings

import pytest
import torch

from compress.kernels import dispatch, quant_matmul, reference

from .util import assert_matches, make_generator, random_int4, random_ternary, random_x

N, K = 37, 128


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    dispatch.reset_fallbacks()
    yield
    dispatch.reset_fallbacks()


def _int4(gen):
    qweight, scales, zeros, _ = random_int4(N, K, 32, True, gen)
    return qweight, scales, zeros


def test_choose_kernel_by_batch_size():
    assert dispatch.choose_kernel("int4", 1) == "int4_gemv"
    assert dispatch.choose_kernel("int4", 2) == "int4_splitk"
    assert dispatch.choose_kernel("ternary", 64) == "ternary_splitk"
    assert dispatch.choose_kernel("ternary", 65) == "ternary_gemm"
    assert dispatch.choose_kernel("ternary_a8", 1) == "ternary_a8"
    assert dispatch.choose_kernel("ternary_a8", 4096) == "ternary_a8"
    assert dispatch.choose_kernel("int3", 1) == "int3_gemv" and dispatch.choose_kernel("int3", 65) == "int3_gemm"
    with pytest.raises(ValueError, match="unknown packed format 'int2'; use one of int4, int3, ternary, ternary_a8"):
        dispatch.choose_kernel("int2", 1)


def test_cpu_tensors_use_the_reference_silently():
    gen = make_generator("cpu-auto")
    qweight, scales, zeros = _int4(gen)
    x = random_x(3, K, torch.float32, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=32)
    assert torch.equal(y, reference.int4_matmul(x, qweight, scales, zeros, 32))


@pytest.mark.parametrize("M", [1, 4, 70])
@pytest.mark.parametrize("fmt", ["int4", "ternary", "ternary_a8"])
def test_forced_triton_backend_matches_reference(triton_kernels, monkeypatch, fmt, M):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs on CPU tensors
    gen = make_generator("forced", fmt, M)
    x = random_x(M, K, torch.float16, gen, device)
    if fmt == "int4":
        qweight, scales, zeros, _ = random_int4(N, K, 32, True, gen, device)
        ref = reference.int4_matmul(x, qweight, scales, zeros, 32)
    else:
        qweight, scales, _ = random_ternary(N, K, False, gen, device)
        zeros = None
        ref = (reference.ternary_matmul_a8 if fmt == "ternary_a8" else reference.ternary_matmul)(x, qweight, scales)
    calls = []
    real = dispatch._triton_function
    monkeypatch.setattr(dispatch, "_triton_function", lambda k: calls.append(k) or real(k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn
        y = quant_matmul(x, qweight, scales, zeros, fmt=fmt, group_size=32)
    assert calls == [dispatch.choose_kernel(fmt, M)]
    assert_matches(y, ref)


def test_missing_triton_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")

    def no_triton(kernel):
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(dispatch, "_triton_function", no_triton)
    gen = make_generator("no-triton")
    qweight, scales, zeros = _int4(gen)
    tq, ts, _ = random_ternary(N, K, True, gen)
    with pytest.warns(RuntimeWarning) as record:
        for M in (1, 5, 80):  # three different kernels, still one warning
            x = random_x(M, K, torch.float32, gen)
            y = quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=32)
            assert torch.equal(y, reference.int4_matmul(x, qweight, scales, zeros, 32))
            assert torch.equal(quant_matmul(x, tq, ts, fmt="ternary"), reference.ternary_matmul(x, tq, ts))
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "Triton cannot be imported" in messages[0] and "using the PyTorch reference" in messages[0]


def test_compile_failure_falls_back_once_per_kernel(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    attempts = []

    def broken(kernel):
        def launch(*args, **kwargs):
            attempts.append(kernel)
            raise RuntimeError("PassManager::run failed")  # what a Triton compile error looks like
        return launch

    monkeypatch.setattr(dispatch, "_triton_function", broken)
    gen = make_generator("broken")
    qweight, scales, zeros = _int4(gen)
    x = random_x(1, K, torch.float16, gen)
    with pytest.warns(RuntimeWarning, match=r"Triton kernel int4_gemv failed \(RuntimeError: PassManager::run failed\)") as record:
        for _ in range(3):
            y = quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=32)
            assert torch.equal(y, reference.int4_matmul(x, qweight, scales, zeros, 32))
    assert attempts == ["int4_gemv"]  # not retried after the first failure
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1


def test_backend_env_and_shape_errors_are_clear(monkeypatch):
    gen = make_generator("errors")
    qweight, scales, zeros = _int4(gen)
    with pytest.raises(ValueError, match="x has 64 features but the packed int4 weight expects K=128"):
        quant_matmul(torch.randn(2, 64), qweight, scales, zeros, fmt="int4", group_size=32)
    with pytest.raises(ValueError, match="ternary weights have no zero points"):
        tq, ts, _ = random_ternary(N, K, False, gen)
        quant_matmul(torch.randn(2, K), tq, ts, zeros, fmt="ternary")
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="COMPRESS_KERNELS_BACKEND='cuda' is not a backend; use auto, triton or reference"):
        quant_matmul(torch.randn(2, K), qweight, scales, zeros, fmt="int4", group_size=32)


# --------------------------------------------------------------------------- custom op

def _op_args(fmt: str, requires_grad: bool = False):
    gen = make_generator("op", fmt)
    x = random_x(3, K, torch.float32, gen).requires_grad_(requires_grad)
    if fmt == "int4":
        qweight, scales, zeros = _int4(gen)
        return (x, qweight, scales, zeros, fmt, 32)
    qweight, scale, _ = random_ternary(N, K, False, gen)
    return (x, qweight, scale, None, fmt, 0)


@pytest.mark.parametrize("fmt", ["int4", "ternary", "ternary_a8"])
def test_custom_op_passes_opcheck(fmt):
    # Checks the schema, the fake (meta) implementation and the autograd registration.
    torch.library.opcheck(torch.ops.compress.quant_matmul.default, _op_args(fmt, requires_grad=True))


def test_fake_impl_gives_shape_and_dtype_without_computing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, qweight, scales, zeros, fmt, G = _op_args("int4")
    mode = FakeTensorMode()
    fake = [mode.from_tensor(t) for t in (x.detach().half().reshape(1, 3, K), qweight, scales, zeros)]
    with mode:
        y = torch.ops.compress.quant_matmul(*fake, fmt, G)
    assert y.shape == (1, 3, N) and y.dtype == torch.float16


def test_eager_shortcut_and_custom_op_agree(monkeypatch):
    x, qweight, scales, zeros, fmt, G = _op_args("int4")
    ops = []
    real = dispatch._impl
    monkeypatch.setattr(dispatch, "_impl", lambda *a: ops.append(1) or real(*a))  # the op's body
    eager = quant_matmul(x, qweight, scales, zeros, fmt=fmt, group_size=G)
    assert ops == []  # plain eager call: no dispatcher round trip
    via_op = torch.ops.compress.quant_matmul(x, qweight, scales, zeros, fmt, G)
    assert ops == [1] and torch.equal(eager, via_op)


@pytest.mark.parametrize("fmt", ["int4", "ternary"])
def test_gradient_flows_to_activations(fmt):
    x, qweight, scales, zeros, _, G = _op_args(fmt, requires_grad=True)
    y = quant_matmul(x, qweight, scales, zeros, fmt=fmt, group_size=G)
    (y * torch.arange(N, dtype=y.dtype)).sum().backward()
    from compress.kernels.formats import dequantize_int4, dequantize_ternary

    w = dequantize_int4(qweight, scales, zeros, G, torch.float32) if fmt == "int4" else dequantize_ternary(qweight, scales)
    torch.testing.assert_close(x.grad, torch.arange(N, dtype=torch.float32).expand(3, N) @ w)


class _TinyQuantMLP(torch.nn.Module):
    """Stands in for a model with QuantLinear layers: two packed matmuls and a nonlinearity."""

    def __init__(self, gen):
        super().__init__()
        qweight, scales, zeros, _ = random_int4(K, K, 64, True, gen)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        tq, ts, _ = random_ternary(N, K, False, gen)
        self.register_buffer("tq", tq)
        self.register_buffer("ts", ts)

    def forward(self, x):
        h = torch.nn.functional.silu(quant_matmul(x, self.qweight, self.scales, self.zeros, fmt="int4", group_size=64))
        return quant_matmul(h, self.tq, self.ts, fmt="ternary")


def test_torch_compile_fullgraph_through_the_custom_op():
    # aot_eager traces with fake tensors and functionalises like inductor, without a C++ build.
    model = _TinyQuantMLP(make_generator("compile"))
    x = random_x(2, K, torch.float32, make_generator("compile-x"))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    torch.testing.assert_close(compiled(x[:1]), model(x[:1]))


@pytest.mark.slow
def test_torch_compile_inductor_on_cpu():
    model = _TinyQuantMLP(make_generator("inductor"))
    x = random_x(4, K, torch.float32, make_generator("inductor-x"))
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
