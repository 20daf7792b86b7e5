"""The PyTorch references against dense matmuls built independently from the codes."""
from __future__ import annotations

import pytest
import torch

from compress.kernels import reference

from .util import make_generator, random_int4, random_ternary, random_x


@pytest.mark.parametrize("K,group_size,asym", [(128, 32, True), (128, 64, False), (128, -1, True),
                                               (96, 64, True), (80, 32, False), (96, 128, True)])  # partial last groups
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_int4_reference_equals_dense_matmul(K, group_size, asym, dtype):
    N, M = 37, 5
    gen = make_generator("ref-int4", K, group_size, asym, dtype)
    qweight, scales, zeros, q = random_int4(N, K, group_size, asym, gen)
    G = K if group_size == -1 else group_size
    z = torch.full_like(scales, 8.0, dtype=torch.float32) if zeros is None else zeros.float()
    # Dense weight straight from the codes, not through dequantize_int4.
    w = torch.stack([(q[:, k] - z[k // G]) * scales[k // G].float() for k in range(K)], dim=1)
    x = random_x(M, K, dtype, gen)
    y = reference.int4_matmul(x, qweight, scales, zeros, group_size)
    assert y.dtype == dtype and y.shape == (M, N)
    torch.testing.assert_close(y, (x.float() @ w.t()).to(dtype))


def test_ternary_reference_equals_dense_matmul_and_keeps_leading_dims():
    N, K = 37, 96
    gen = make_generator("ref-ternary")
    qweight, scale, c = random_ternary(N, K, False, gen)
    x = torch.randn(2, 3, K, generator=gen)
    y = reference.ternary_matmul(x, qweight, scale)
    assert y.shape == (2, 3, N)
    torch.testing.assert_close(y, x @ ((c - 1).float() * scale[:, None]).t())


def test_activation_quantisation_is_per_token_absmax_int8():
    x = torch.tensor([[0.5, -1.0, 0.25], [10.0, 0.0, -5.0], [0.0, 0.0, 0.0]])
    x_q, inv = reference.quantize_activations_int8(x)
    assert x_q.dtype == torch.int8 and inv.dtype == torch.float32
    assert x_q.tolist() == [[64, -127, 32], [127, 0, -64], [0, 0, 0]]
    torch.testing.assert_close(inv[:2], torch.tensor([127.0, 12.7]))
    assert torch.isfinite(inv).all()  # an all-zero token does not divide by zero


def test_a8_reference_is_the_exact_integer_dot_rescaled():
    N, K, M = 37, 128, 4
    gen = make_generator("ref-a8")
    qweight, scale, c = random_ternary(N, K, False, gen)
    x = random_x(M, K, torch.float32, gen)
    x_q, inv = reference.quantize_activations_int8(x)
    acc = (x_q.long() @ (c - 1).long().t()).double()  # exact integers
    expected = (acc / inv.double()[:, None] * scale.double()[None, :]).float()
    y = reference.ternary_matmul_a8(x, qweight, scale)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    # ...and close to the float-activation result, within int8 rounding of x.
    y16 = reference.ternary_matmul(x, qweight, scale)
    err = (y - y16).abs().max() / y16.abs().max()
    assert 0 < err < 0.02


def test_a8_rescale_is_transformers_bitlinear_bit_for_bit():
    """BitLinear (transformers/integrations/bitnet.py) computes ``acc / (weight_scale * inv)`` with
    ``weight_scale = 1/gamma`` as the bitnet export stores it; ours must give the same float32 bits
    (multiplying by 1/inv and gamma differs in the last bit for about half the outputs)."""
    N, K, M = 64, 256, 32
    gen = make_generator("ref-a8-bitlinear")
    qweight, _, c = random_ternary(N, K, False, gen)
    for gamma in (torch.tensor([0.0137], dtype=torch.float16), torch.tensor(0.021, dtype=torch.float32)):
        x = random_x(M, K, torch.float32, gen) * 3
        weight_scale = (1.0 / gamma.double().reshape(1)).float()  # bitnet.bitnet_state, float32 model
        # BitLinear.activation_quant and .forward, transcribed
        scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        x_q = (x * scale).round().clamp(-128, 127).to(torch.int8)
        theirs = torch.nn.functional.linear(x_q.to(torch.float32), (c - 1).float()) / (weight_scale * scale)
        assert torch.equal(reference.ternary_matmul_a8(x, qweight, gamma), theirs)
        # the old order (acc * (1/inv) * gamma) is not the same function: the test can tell them apart
        old = torch.nn.functional.linear(x_q.float(), (c - 1).float()) * (1.0 / scale) * gamma.float()
        assert not torch.equal(old, theirs)
