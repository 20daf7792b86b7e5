"""Random packed weights and the kernel-vs-reference comparison used by the kernel tests."""
from __future__ import annotations

import zlib

import torch

from compress.kernels import formats


def make_generator(*key) -> torch.Generator:
    """A generator seeded from the test case, so every case gets its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def random_int4(N: int, K: int, group_size: int, asym: bool, gen: torch.Generator, device="cpu"):
    """Random packed int4 weight: (qweight, scales fp16, zeros or None, codes [N, K])."""
    G = K if group_size == -1 else group_size
    rows = formats.int4_num_groups(K, G)  # the last group may be partial
    q = torch.randint(0, 16, (N, K), generator=gen)
    scales = (torch.rand(rows, N, generator=gen) * 0.02 + 0.005).half()
    zeros = torch.randint(0, 16, (rows, N), generator=gen).half() if asym else None
    return formats.pack_int4(q).to(device), scales.to(device), None if zeros is None else zeros.to(device), q


def random_int3(N: int, K: int, group_size: int, asym: bool, gen: torch.Generator, device="cpu"):
    """Random packed int3 weight (bit planes): (qweight, scales fp16, zeros or None, codes [N, K])."""
    G = K if group_size == -1 else group_size
    rows = formats.int4_num_groups(K, G)
    q = torch.randint(0, 8, (N, K), generator=gen)
    scales = (torch.rand(rows, N, generator=gen) * 0.04 + 0.01).half()
    zeros = (torch.rand(rows, N, generator=gen) * 7).half() if asym else None  # fractional: float zero points
    return formats.pack_int3(q).to(device), scales.to(device), None if zeros is None else zeros.to(device), q


def random_ternary(N: int, K: int, per_tensor: bool, gen: torch.Generator, device="cpu"):
    """Random packed ternary weight: (qweight, scale, codes [N, K])."""
    c = torch.randint(0, 3, (N, K), generator=gen)
    scale = torch.rand(() if per_tensor else (N,), generator=gen) * 0.1 + 0.01
    return formats.pack_ternary(c).to(device), scale.to(device), c


def random_x(M: int, K: int, dtype: torch.dtype, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Activations with a non-zero mean, so an error in the zero-point term (which
    scales with sum(x)) cannot hide behind zero-mean noise."""
    return (torch.randn(M, K, generator=gen) + 0.5).to(device=device, dtype=dtype)


def assert_matches(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Kernel vs reference: no NaN left from the poisoned output, and close in x's dtype.

    Both accumulate in fp32; they differ by summation order plus one rounding to
    the output dtype, so the tolerance is a few ulps of that dtype relative to
    the output's magnitude.
    """
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert not torch.isnan(y).any(), "kernel left unwritten (NaN-poisoned) outputs"
    scale = ref.float().abs().max().item() + 1e-6
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[y.dtype]
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol * scale)
