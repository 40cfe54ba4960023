"""The Triton kernel of :mod:`timm_asap.layers.triton_pool` (importing this module imports triton).

Kept in its own module so that ``import timm_asap`` never imports triton: :func:`triton_pool._kernel`
imports (or, after a change of ``TRITON_INTERPRET``, reloads) it on the first kernel call.
"""
import triton
import triton.language as tl

__all__ = ['mma', 'spectral_pool_kernel']


@triton.jit
def mma(acc, a, b, IEEE: tl.constexpr, WIDEN: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation (``a`` and ``b`` of one type)."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return acc + tl.dot(a, b, input_precision='ieee')
    return acc + tl.dot(a, b)


@triton.jit
def spectral_pool_kernel(
        x_ptr, y_ptr, l1_ptr, r1_ptr, l2_ptr, r2_ptr,
        channels, in_h, in_w, out_h, out_w,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        HAS_IMAG: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    plane = tl.program_id(0)
    n = plane // channels
    c = plane % channels
    x_base = x_ptr + n * sxn + c * sxc
    rows = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)          # output rows of this program
    cols = tl.arange(0, BLOCK_J)                                        # every output column
    acc = tl.full((BLOCK_I, BLOCK_J), 0.0, tl.float32)
    for k0 in range(0, in_h, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)                                 # input rows of this tile
        s1 = tl.full((BLOCK_K, BLOCK_J), 0.0, tl.float32)               # X[ks, :] R1^T
        s2 = tl.full((BLOCK_K, BLOCK_J), 0.0, tl.float32)               # X[ks, :] R2^T
        for b0 in range(0, in_w, BLOCK_B):
            bs = b0 + tl.arange(0, BLOCK_B)                             # input columns of this tile
            xt = tl.load(x_base + ks[:, None] * sxh + bs[None, :] * sxw,
                         mask=(ks[:, None] < in_h) & (bs[None, :] < in_w), other=0.0)
            r_offsets = cols[None, :] * in_w + bs[:, None]              # an R^T tile (BLOCK_B, BLOCK_J)
            r_mask = (bs[:, None] < in_w) & (cols[None, :] < out_w)
            r1 = tl.load(r1_ptr + r_offsets, mask=r_mask, other=0.0)
            xt = xt.to(r1.dtype)
            s1 = mma(s1, xt, r1, IEEE, WIDEN)
            if HAS_IMAG:
                s2 = mma(s2, xt, tl.load(r2_ptr + r_offsets, mask=r_mask, other=0.0), IEEE, WIDEN)
        l_offsets = rows[:, None] * in_h + ks[None, :]                  # an L tile (BLOCK_I, BLOCK_K)
        l_mask = (rows[:, None] < out_h) & (ks[None, :] < in_h)
        l1 = tl.load(l1_ptr + l_offsets, mask=l_mask, other=0.0)
        # the intermediate rounded to the matrices' type (float32, or the half type)
        acc = mma(acc, l1, s1.to(l1.dtype), IEEE, WIDEN)
        if HAS_IMAG:
            l2 = tl.load(l2_ptr + l_offsets, mask=l_mask, other=0.0)
            acc = mma(acc, l2, s2.to(l2.dtype), IEEE, WIDEN)
    y_mask = (rows[:, None] < out_h) & (cols[None, :] < out_w)
    tl.store(y_ptr + n * syn + c * syc + rows[:, None] * syh + cols[None, :] * syw,
             acc.to(y_ptr.dtype.element_ty), mask=y_mask)
