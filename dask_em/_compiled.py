"""Compiled panel kernels that run without the GIL (numba ``nogil``), with the numpy kernels as fallback.

An E-step panel builds its design, multiplies it into (K, P) log-densities,
turns them into responsibilities, adds the panel's log-likelihood to its
record and multiplies the responsibilities back into statistics. Written
with numpy that is twenty-odd calls a panel, each of whose fixed part holds
the GIL (5-9% of an E-step thread at d=16: Amdahl caps 16 threads near 8x),
and ``exp`` in float64 runs one value at a time (about 5 ns a value on x86-64
without AVX-512: a third of a full-covariance E-step at d=16).

* :func:`product_estep`: a restart's whole chunk on a *product design* (the
  Gaussian moment design of full/tied covariances at small d, the diagonal
  design) in one call: the design, the log-density GEMM (numpy's own BLAS,
  called through its C interface, so the same kernels numpy would run), the
  responsibilities, the statistics product (:func:`_dots_kernel`: a dot
  product per statistic, register-blocked, faster than OpenBLAS on these
  skinny shapes and the same whatever BLAS numpy has) and the sums. Nothing
  of it holds the GIL. Where the design is so wide that an L2-sized panel
  holds only 16-64 rows (the moment design at large d), the *pair kernel*
  takes the statistics over taller panels of the rows ``y = x - shift``
  instead, each design column made on the fly as the product of two rows of
  ``y`` (:func:`_pairs_dots_kernel`, in 512-bit vectors where the processor
  has them): the design is then read once, by the GEMM.
* :func:`residual_estep`: the same for full/tied covariances on the
  residual design ``[x - c, 1]`` (above the moment design's d, or with means
  far from the shift): one GEMM for every whitened residual, their squares
  summed per component, the responsibilities, the statistics product.
* :func:`profile_estep`: the same for full/tied rows with missing values
  (the rarer patterns, profiled out of the quadratic form row by row).
* :func:`rows_estep`: the same for the Bernoulli design ``[x, 1]`` and the
  categorical one-hot design.
* :func:`normalize`: a panel's log-sum-exp, responsibilities, weighting and
  likelihood sums in one call (the other kernels: diag/spherical rows with
  missing values, the Poisson family).
* :func:`product_design`: a panel's product design in one call (where
  :func:`product_estep` cannot find numpy's BLAS).

The exponential and logarithm are written to vectorize (range reduction and
a polynomial, within about one unit in the last place): the results equal
numpy's to round-off. The kernels are compiled on first use in a process
(a few seconds) and cached next to this module where it is writable
(numba's ``cache=True``), so later processes load them in milliseconds;
numba is imported only then, not with ``dask_em``. Where numba is not
installed or cannot compile, or ``DASK_EM_COMPILED=0`` is in the environment
when the first E-step runs, the numpy kernels run.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import warnings

import numpy as np

from ._machine import aligned_empty, core_caches

__all__ = ["ENV_SWITCH", "enabled", "normalize", "product_design", "product_estep", "products_run", "profile_estep",
           "residual_estep", "rows_estep"]

# Set to 0 to run the numpy kernels (for instance on workers whose memory is too tight for
# numba's 50 MiB, or to compare the two).
ENV_SWITCH = "DASK_EM_COMPILED"

# exp() of anything below the floor: float64 takes it at the floor, exp(-600) ~ 1e-261, as
# dask_em.family.responsibilities does; float32 takes it as zero below -64. Responsibilities of
# exp(-87) ~ 1e-38 (float32's smallest normal) made the statistics product's terms subnormal: on
# Intel processors every such multiply is a microcode assist (float32 ran 18x slower than float64,
# full covariance at d=64), while a term below exp(-64) ~ 2e-28 of the row's largest is far under
# float32's resolution (6e-8). numpy's float32 exp gives zero below -104 and subnormals above.
FLOORS = {np.dtype(np.float64): -600.0, np.dtype(np.float32): -64.0}

_LOCK = threading.Lock()
# Every kernel's entry in _STATE, where none runs.
_NO_KERNELS = dict.fromkeys(("kernel", "design", "product", "pairs", "residual", "profile", "rows",
                              "rows-normalize", "product-logp"))
_STATE: dict = {}


def _constants(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's floating constants (in ``dtype``) and integer ones (in the same-width integer type)."""
    itype = np.int64 if dtype.itemsize == 8 else np.int32
    mant = 52 if dtype.itemsize == 8 else 23
    bias = 1023 if dtype.itemsize == 8 else 127
    shift = dtype.type(1.5 * 2.0**mant)  # x + shift rounds x to an integer held in the low bits
    if dtype.itemsize == 8:  # Cody-Waite split of ln 2: ln2_hi times any k <= 2**11 is exact
        ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    else:
        ln2_hi = 0.693359375
        ln2_lo = math.log(2.0) - ln2_hi
    head = [math.log2(math.e), ln2_hi, ln2_lo, math.log(2.0), math.sqrt(2.0), float(shift), 0.5, 2.0]
    exp_terms = [1.0 / math.factorial(i) for i in range(14)]  # Taylor to degree 13 on |x| <= ln2 / 2
    log_terms = [1.0 / (2 * i + 1) for i in range(11)]  # atanh series on |s| <= 0.172
    floats = np.array(head + exp_terms + log_terms + [0.0], dtype=np.float64).astype(dtype)  # [33]: zero
    ints = np.array([int(np.asarray(shift).view(itype)), bias, mant, (1 << mant) - 1,
                     int(np.asarray(dtype.type(1.0)).view(itype))], dtype=itype)
    return floats, ints


def _normalize_kernel(wlp, w, floor, entropy, work, fc, ic, scal):  # pragma: no cover - compiled
    """The compiled body of :func:`normalize` (numba: every loop below runs along a panel's rows)."""
    k, p = wlp.shape
    log2e, ln2hi, ln2lo, ln2, sqrt2, shift, half, two = fc[0], fc[1], fc[2], fc[3], fc[4], fc[5], fc[6], fc[7]
    zero, one, c2, c3, c4, c5, c6, c7 = fc[33], fc[8], fc[10], fc[11], fc[12], fc[13], fc[14], fc[15]
    c8, c9, c10, c11, c12, c13 = fc[16], fc[17], fc[18], fc[19], fc[20], fc[21]
    d3, d5, d7, d9, d11, d13, d15, d17, d19, d21 = (fc[23], fc[24], fc[25], fc[26], fc[27], fc[28], fc[29], fc[30],
                                                    fc[31], fc[32])
    shift_bits, bias, mant, mask, one_bits = ic[0], ic[1], ic[2], ic[3], ic[4]
    top, total, scale, vsum, last = work[0, :p], work[1, :p], work[2, :p], work[3, :p], work[4, :p]
    scale_bits = work[2].view(ic.dtype)[:p]
    total_bits = work[1].view(ic.dtype)[:p]
    mantissa_bits = work[4].view(ic.dtype)[:p]
    # Row maxima (a NaN anywhere reaches the row's total through exp below).
    for r in range(p):
        top[r] = wlp[0, r]
        total[r] = 0.0
        vsum[r] = 0.0
    for j in range(1, k):
        row = wlp[j]
        for r in range(p):
            a = row[r]
            top[r] = a if a > top[r] else top[r]
    # exp(v - top), floored (float32: zero below the floor), one component row at a time: v = k ln2 + x,
    # exp = 2**k p(x).
    zero_below = wlp.itemsize == 4
    for j in range(k):
        row = wlp[j]
        for r in range(p):
            v = row[r] - top[r]
            v = floor if v < floor else v  # NaN passes
            s = v * log2e + shift
            kf = s - shift
            x = (v - kf * ln2hi) - kf * ln2lo
            row[r] = one + x * (one + x * (c2 + x * (c3 + x * (c4 + x * (c5 + x * (c6 + x * (c7 + x * (
                c8 + x * (c9 + x * (c10 + x * (c11 + x * (c12 + x * c13))))))))))))
            last[r] = v
            scale[r] = s
        for r in range(p):  # 2**k from the integer in the low bits of s
            scale_bits[r] = (scale_bits[r] - shift_bits + bias) << mant
        # float32: zero at the floor, selected in the loop that takes the products. As a pass of its own
        # (over scale, a view of the same work array as last) it doubled the float32 log-sum-exp's time
        # where most values sit at the floor, as they do with well separated components (0.040 against
        # 0.020 s per 2M rows, K=8, one thread, Intel Xeon).
        if entropy:
            for r in range(p):
                e = row[r] * scale[r]
                e = zero if zero_below and last[r] <= floor else e
                row[r] = e
                total[r] += e
                vsum[r] += e * last[r]
        else:
            for r in range(p):
                e = row[r] * scale[r]
                e = zero if zero_below and last[r] <= floor else e
                row[r] = e
                total[r] += e
    # log(total): total = m 2**e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)).
    for r in range(p):
        b = total_bits[r]
        scale[r] = (b >> mant) - bias
        mantissa_bits[r] = (b & mask) | one_bits
    for r in range(p):
        m = last[r]
        e = scale[r]
        t = total[r]
        big = m > sqrt2
        m = half * m if big else m
        e = e + one if big else e
        s = (m - one) / (m + one)
        s2 = s * s
        lg = e * ln2 + two * s * (one + s2 * (d3 + s2 * (d5 + s2 * (d7 + s2 * (d9 + s2 * (
            d11 + s2 * (d13 + s2 * (d15 + s2 * (d17 + s2 * (d19 + s2 * d21))))))))))
        scale[r] = lg if t == t else t  # NaN rows stay NaN
    loglik, wsum, ent = 0.0, 0.0, 0.0
    weighted = w.shape[0] > 0
    for r in range(p):
        wr = w[r] if weighted else 1.0
        loglik += wr * (np.float64(scale[r]) + np.float64(top[r]))
        wsum += wr
    if entropy:  # sum_j r_j log r_j = sum_j e_j v_j / total - log total
        for r in range(p):
            wr = w[r] if weighted else 1.0
            ent += wr * (np.float64(vsum[r]) / np.float64(total[r]) - np.float64(scale[r]))
    for r in range(p):
        wr = w[r] if weighted else 1.0
        total[r] = wr / total[r]
    for j in range(k):
        row = wlp[j]
        for r in range(p):
            row[r] *= total[r]
    scal[0] += loglik
    scal[1] += wsum
    scal[2] += ent


def _rows_normalize_kernel(wlp, w, floor, fc, ic, buf, work, log_norm, proba, scal):  # pragma: no cover - compiled
    """The compiled body of :func:`normalize_rows`: (n, K) rows through :func:`_normalize_kernel` in panels."""
    n, k = wlp.shape
    rows = work.shape[1]
    want = proba.shape[0] > 0
    for lo in range(0, n, rows):
        t = min(rows, n - lo)
        panel = buf[: k * t].reshape((k, t))
        for r in range(t):
            for j in range(k):
                panel[j, r] = wlp[lo + r, j]
        _normalize_jit(panel, w, floor, False, work, fc, ic, scal)
        for r in range(t):  # the log of each row's total, and its maximum
            log_norm[lo + r] = work[2, r] + work[0, r]
        if want:  # a component below the floor (-600 from the row's best; -inf: none) has exactly none
            top, zero = work[0], fc[33]
            for r in range(t):
                for j in range(k):
                    proba[lo + r, j] = panel[j, r] if wlp[lo + r, j] - top[r] > floor else zero


def _panel_logp_kernel(x, shift, pi, pj, coef, design, logp, one, zero, gemm, gemm_cols):  # pragma: no cover
    """One panel of a product design: the design of the rows ``x`` and its log-density GEMM, ``coef @ phi``;
    returns the views ``(phi, lp)`` of ``design`` and ``logp`` they fill."""
    t = x.shape[0]
    kp, width = coef.shape
    phi = design[: width * t].reshape((width, t))
    _design_jit(x, shift, pi, pj, phi)
    ones = phi[width - 1]
    for r in range(t):
        ones[r] = one
    lp = logp[: kp * t].reshape((kp, t))
    _matmul_jit(gemm, coef, phi, lp, one, zero, gemm_cols)
    return phi, lp


def _product_logp_kernel(x, shift, pi, pj, coef, k, panel, gemm_cols, one, zero, design, logp, gemm,
                         out):  # pragma: no cover - compiled
    """The compiled body of :func:`product_logp`: each panel's design and log-density GEMM, rows into ``out``."""
    n = x.shape[0]
    for lo in range(0, n, panel):
        t = min(panel, n - lo)
        _, lp = _panel_logp_jit(x[lo : lo + t], shift, pi, pj, coef, design, logp, one, zero, gemm, gemm_cols)
        for r in range(t):
            for j in range(k):
                out[lo + r, j] = lp[j, r]


def _product_kernel(x, w, shift, pi, pj, coef, k, panel, gemm_cols, entropy, stop_at_nan, floor, fc, ic,
                    design, logp, part, work, stats, gemm, scal):  # pragma: no cover - compiled
    """The compiled body of :func:`product_estep`: False where it stopped at a NaN log-likelihood."""
    n = x.shape[0]
    weighted = w.shape[0] > 0
    block = STATS_BLOCK_FLOAT32 if design.itemsize == 4 else panel
    for lo in range(0, n, panel):
        t = min(panel, n - lo)
        phi, lp = _panel_logp_jit(x[lo : lo + t], shift, pi, pj, coef, design, logp, fc[8], fc[33], gemm, gemm_cols)
        before = scal[0]
        _normalize_jit(lp[:k], w[lo : lo + t] if weighted else w, floor, entropy, work, fc, ic, scal)
        if stop_at_nan and scal[0] != scal[0] and before == before:
            return False
        # The statistics, lp[:k] @ phi.T, compiled (a dot product per output along the panel's rows:
        # 1.1-1.4x OpenBLAS's GEMM for these skinny shapes).
        _dots_add_jit(lp, phi, part, stats, 0, k, t, block, fc[33])
    return True



def _pairs_kernel(x, w, shift, pi, pj, blocks, coef, k, panel, stats_rows, entropy, stop_at_nan, floor, fc, ic,
                  design, logp, part, work, ybuf, stats, gemm, scal):  # pragma: no cover - compiled
    """:func:`_product_kernel` for wide designs: statistics over panels of ``stats_rows`` rows, without the design.

    The design of each panel of ``panel`` rows feeds the log-density GEMM only.
    The statistics of ``stats_rows`` rows (a multiple of ``panel``) are then
    products of the responsibilities with each design column made on the fly
    from the rows ``y = x - shift`` (:func:`_pairs_dots_kernel`), so they are
    summed along many more rows than one L2-sized design panel holds, and the
    design is read once, not twice.
    """
    n, d = x.shape
    kp, width = coef.shape
    weighted = w.shape[0] > 0
    for lo in range(0, n, stats_rows):
        tt = min(stats_rows, n - lo)
        y = ybuf[: (d + 1) * tt].reshape((d + 1, tt))
        _rows_minus_jit(x[lo : lo + tt], shift, y)
        for r in range(tt):
            y[d, r] = 1.0
        lp = logp[: kp * tt].reshape((kp, tt))
        for s in range(0, tt, panel):
            t = min(panel, tt - s)
            phi = design[: width * t].reshape((width, t))
            _design_jit(x[lo + s : lo + s + t], shift, pi, pj, phi)
            ones = phi[width - 1]
            for r in range(t):
                ones[r] = 1.0
            _matmul_jit(gemm, coef, phi, lp[:, s : s + t], fc[8], fc[33], t)
        before = scal[0]
        _normalize_jit(lp[:k], w[lo : lo + tt] if weighted else w, floor, entropy, work, fc, ic, scal)
        if stop_at_nan and scal[0] != scal[0] and before == before:
            return False
        _pairs_dots_jit(lp, y, blocks, part, fc[33], tt, k)
        for i in range(k):
            for c in range(width):
                stats[i, c] += part[i, c]
    return True


def _residual_kernel(x, w, shift, stacked, log_const, means, raw, k, tile, entropy, stop_at_nan, floor,
                     fc, ic, design, resid, ybuf, logp, part, work, mass, xw, gemm,
                     scal):  # pragma: no cover - compiled
    """The compiled body of :func:`residual_estep`: False where it stopped at a NaN log-likelihood."""
    n, d = x.shape
    kd, width = stacked.shape
    weighted = w.shape[0] > 0
    one, zero, half = fc[8], fc[33], fc[6]
    block = STATS_BLOCK_FLOAT32 if design.itemsize == 4 else tile
    for lo in range(0, n, tile):
        t = min(tile, n - lo)
        xa = design[: width * t].reshape((width, t))
        _rows_minus_jit(x[lo : lo + t], shift, xa)  # the rows x - c, a design row per feature
        ones = xa[d]
        for r in range(t):
            ones[r] = one
        z = resid[: kd * t].reshape((kd, t))
        u = ybuf[: width * t].reshape((width, t))
        # Every component's whitened residuals U_k^T (x - m_k): one GEMM (K d, d + 1) @ (d + 1, t).
        _matmul_jit(gemm, stacked, xa, z, one, zero, t)
        lp = logp[: k * t].reshape((k, t))
        for j in range(k):
            out = lp[j]
            for r in range(t):
                out[r] = zero
            for i in range(d):
                zi = z[j * d + i]
                for r in range(t):
                    out[r] += zi[r] * zi[r]
            cj = log_const[j]
            for r in range(t):
                out[r] = cj - half * out[r]
        before = scal[0]
        _normalize_jit(lp, w[lo : lo + t] if weighted else w, floor, entropy, work, fc, ic, scal)
        if stop_at_nan and scal[0] != scal[0] and before == before:
            return False
        for j in range(k):
            row = lp[j]
            s = 0.0
            for r in range(t):
                s += np.float64(row[r])
            mass[j] += s
        # Per component, u = [sqrt(r_k) y, sqrt(r_k)] with y = x - m_k (x - c for raw moments): the lower
        # triangle of u u^T holds sum_i r_ik y_i y_i^T (symmetric: half the products of r_k y times [x - c, 1])
        # and a_k, turned into sum_i r_ik (x_i - m_k)(x_i - c)^T and, last, a_k.
        for j in range(k):
            rj = lp[j]
            sq = u[d]
            for r in range(t):
                sq[r] = np.sqrt(rj[r])
            for i in range(d):
                xi, ui = xa[i], u[i]
                m = zero if raw else means[j, i]
                for r in range(t):
                    ui[r] = sq[r] * (xi[r] - m)
            _centered_add_jit(u, means[j], raw, part, xw, j * d, t, block, zero)
    return True


def _profile_kernel(x, w, group, cols, pidx, shift, stacked, means, cond, log_det_mm, log_const, tile, entropy,
                    floor, fc, ic, design, g, e, logp, wt, part, work, mass, pattern_mass, ab, gemm,
                    scal):  # pragma: no cover - compiled
    """The compiled body of :func:`profile_estep`."""
    n, d = group.shape[0], x.shape[1]
    s = cols.shape[1]
    kd, width = stacked.shape
    k = log_const.shape[0]
    weighted = w.shape[0] > 0
    one, zero, half = fc[8], fc[33], fc[6]
    for lo in range(0, n, tile):
        t = min(tile, n - lo)
        # The tile's design [x - c; 1] (d + 1, t), zero at the missing coordinates, in blocks of rows.
        xa = design[: width * t].reshape((width, t))
        for r0 in range(0, t, 64):
            r1 = min(r0 + 64, t)
            for i in range(d):
                c, xi = shift[i], xa[i]
                for r in range(r0, r1):
                    xi[r] = np.float64(x[group[lo + r], i]) - c
        for r in range(t):
            xa[d, r] = one
            for a in range(s):
                xa[cols[lo + r, a], r] = zero
            if weighted:
                wt[r] = w[group[lo + r]]
        # g = L_k (x - mu_k) for every component: one GEMM (K d, d + 1) @ (d + 1, t).
        gt = g[: kd * t].reshape((kd, t))
        _matmul_jit(gemm, stacked, xa, gt, one, zero, t)
        lp = logp[: k * t].reshape((k, t))
        for j in range(k):
            out = lp[j]
            ej = e[j * width * t : (j + 1) * width * t].reshape((width, t))
            for r in range(t):
                out[r] = zero
            for i in range(d):  # w = x - mu (filled) into e, and w^T g
                gi, ei, xi, m = gt[j * d + i], ej[i], xa[i], means[j, i]
                for r in range(t):
                    v = xi[r] - m
                    ei[r] = v
                    out[r] += v * gi[r]
            ones = ej[d]
            for r in range(t):
                ones[r] = one
            # h = g_m; C h with the row's pattern's C = (L_mm)^-1; the form w^T g - h^T C h; x^_m - mu_m = w_m - C h
            for r in range(t):
                p = pidx[lo + r]
                corr = zero
                for a in range(s):
                    step = zero
                    for b in range(s):
                        step += cond[p, j, a, b] * gt[j * d + cols[lo + r, b], r]
                    corr += gt[j * d + cols[lo + r, a], r] * step
                    ej[cols[lo + r, a], r] -= step
                out[r] = log_const[j] - half * (out[r] - corr + log_det_mm[p, j])
        _normalize_jit(lp, wt[:t] if weighted else w, floor, entropy, work, fc, ic, scal)
        for j in range(k):
            row = lp[j]
            total = zero
            for r in range(t):
                total += row[r]
                pattern_mass[j, pidx[lo + r]] += row[r]
            mass[j] += total
            # sum r_k (x^ - mu_k)(x^ - mu_k)^T and sum r_k (x^ - mu_k), [b_k | a_k]: the lower triangle of u u^T,
            # u = sqrt(r_k) [x^ - mu_k; 1] (e's block, no longer needed), as the residual design's statistics.
            ej = e[j * width * t : (j + 1) * width * t].reshape((width, t))
            sq = ej[d]
            for r in range(t):
                sq[r] = np.sqrt(row[r])
            for i in range(d):
                ei = ej[i]
                for r in range(t):
                    ei[r] *= sq[r]
            _centered_add_jit(ej, means[j], True, part, ab, j * d, t, t, zero)


def _rows_kernel(x, w, onehot, offsets, coef, k, panel, entropy, floor, fc, ic, design, logp, part, work, stats,
                 gemm, scal):  # pragma: no cover - compiled
    """The compiled body of :func:`rows_estep`."""
    n, d = x.shape
    kp, width = coef.shape
    m = width - 1
    weighted = w.shape[0] > 0
    row_major, plain, transposed = np.int32(101), np.int32(111), np.int32(112)
    one, zero = fc[8], fc[33]
    for lo in range(0, n, panel):
        t = min(panel, n - lo)
        z = design[: t * width].reshape((t, width))  # row-major: one design row per data row
        if onehot:
            for r in range(t):
                row = z[r]
                for c in range(m):
                    row[c] = zero
                for j in range(d):
                    code = np.int64(x[lo + r, j])
                    if 0 <= code < offsets[j + 1] - offsets[j]:
                        row[offsets[j] + code] = one
                row[m] = one
        else:
            for r in range(t):
                row = z[r]
                for j in range(d):
                    row[j] = np.float64(x[lo + r, j])
                row[m] = one
        lp = logp[: kp * t].reshape((kp, t))
        # lp = coef @ z.T (kp, t); then part = lp @ z (kp, width)
        _gemm_call(gemm, row_major, plain, transposed, np.int64(kp), np.int64(t), np.int64(width), one,
             np.intp(coef.ctypes.data), np.int64(width), np.intp(z.ctypes.data), np.int64(width), zero,
             np.intp(lp.ctypes.data), np.int64(t))
        _normalize_jit(lp[:k], w[lo : lo + t] if weighted else w, floor, entropy, work, fc, ic, scal)
        _gemm_call(gemm, row_major, plain, plain, np.int64(kp), np.int64(width), np.int64(t), one,
             np.intp(lp.ctypes.data), np.int64(t), np.intp(z.ctypes.data), np.int64(width), zero,
             np.intp(part.ctypes.data), np.int64(width))
        for j in range(k):
            for c in range(width):
                stats[j, c] += part[j, c]


# Rows per float32 block of the statistics, whose sums are added into the float64 totals block by block
# (one sum over a whole panel of float32 products lost a decimal digit against numpy's blocked sums).
STATS_BLOCK_FLOAT32 = 1024


def _dots_kernel(a, b, out, zero, r0, rows, ka, lower=False):  # pragma: no cover - compiled
    """``out[i, j] = sum(a[i, r0:r0 + rows] * b[j, r0:r0 + rows])`` for ``i < ka`` and every row ``j`` of ``b``;
    with ``lower``, for ``j <= i`` only (the lower triangle of a symmetric product, ``b`` is ``a``: half the
    multiply-adds; entries just above the diagonal may be written too).

    A dot product per output along contiguous rows (``a``, ``b`` C-contiguous),
    in blocks of 4 x 3 outputs: each step loads 7 values for 12 fused
    multiply-adds, and the 12 sums stay in vector registers (LLVM vectorizes
    each along the rows). Sums in ``zero``'s type. Indices are unsigned: a
    signed start hides from LLVM that no index wraps around, and the loops
    then do not vectorize.
    """
    lo, hi = np.uint64(r0), np.uint64(r0 + rows)
    kb = b.shape[0]
    i4 = ka - ka % 4
    for i in range(0, i4, 4):
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        top = min(kb, i + 4) if lower else kb
        j3 = top - top % 3
        for j in range(0, j3, 3):
            b0, b1, b2 = b[j], b[j + 1], b[j + 2]
            s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = zero
            for r in range(lo, hi):
                x0, x1, x2, x3, y0, y1, y2 = a0[r], a1[r], a2[r], a3[r], b0[r], b1[r], b2[r]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
            out[i, j], out[i, j + 1], out[i, j + 2] = s00, s01, s02
            out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2] = s10, s11, s12
            out[i + 2, j], out[i + 2, j + 1], out[i + 2, j + 2] = s20, s21, s22
            out[i + 3, j], out[i + 3, j + 1], out[i + 3, j + 2] = s30, s31, s32
        for j in range(j3, top):  # the last one or two columns, four rows at a time
            y = b[j]
            s0 = s1 = s2 = s3 = zero
            for r in range(lo, hi):
                v = y[r]
                s0 += a0[r] * v
                s1 += a1[r] * v
                s2 += a2[r] * v
                s3 += a3[r] * v
            out[i, j], out[i + 1, j], out[i + 2, j], out[i + 3, j] = s0, s1, s2, s3
    for i in range(i4, ka):  # the last one to three rows, three columns at a time
        x = a[i]
        top = min(kb, i + 1) if lower else kb
        j3 = top - top % 3
        for j in range(0, j3, 3):
            b0, b1, b2 = b[j], b[j + 1], b[j + 2]
            s0 = s1 = s2 = zero
            for r in range(lo, hi):
                v = x[r]
                s0 += v * b0[r]
                s1 += v * b1[r]
                s2 += v * b2[r]
            out[i, j], out[i, j + 1], out[i, j + 2] = s0, s1, s2
        for j in range(j3, top):
            y = b[j]
            s0 = zero
            for r in range(lo, hi):
                s0 += x[r] * y[r]
            out[i, j] = s0


def _pairs_dots_kernel(a, y, blocks, out, zero, rows, ka):  # pragma: no cover - compiled
    """``out[i, m] = sum(a[i, :rows] * y[u, :rows] * y[v, :rows])`` for ``i < ka`` and each ``(u, v, m)`` of ``blocks``.

    ``blocks`` (B, 7): ``u, v0, v1, v2, m0, m1, m2``, three products that
    share their first row. :func:`_dots_kernel`'s 4 x 3 blocks, with the
    second operand made on the fly (one multiply per value, not a load of a
    stored design); sums in ``zero``'s type.
    """
    _wide_vectors()
    lo, hi = np.uint64(0), np.uint64(rows)
    i4 = ka - ka % 4
    for i in range(0, i4, 4):
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        for b in range(blocks.shape[0]):
            u, v0, v1, v2 = y[blocks[b, 0]], y[blocks[b, 1]], y[blocks[b, 2]], y[blocks[b, 3]]
            s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = zero
            for r in range(lo, hi):
                ur = u[r]
                y0, y1, y2 = ur * v0[r], ur * v1[r], ur * v2[r]
                x0, x1, x2, x3 = a0[r], a1[r], a2[r], a3[r]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
            m0, m1, m2 = blocks[b, 4], blocks[b, 5], blocks[b, 6]
            out[i, m0], out[i, m1], out[i, m2] = s00, s01, s02
            out[i + 1, m0], out[i + 1, m1], out[i + 1, m2] = s10, s11, s12
            out[i + 2, m0], out[i + 2, m1], out[i + 2, m2] = s20, s21, s22
            out[i + 3, m0], out[i + 3, m1], out[i + 3, m2] = s30, s31, s32
    for i in range(i4, ka):  # the last one to three rows
        x = a[i]
        for b in range(blocks.shape[0]):
            u, v0, v1, v2 = y[blocks[b, 0]], y[blocks[b, 1]], y[blocks[b, 2]], y[blocks[b, 3]]
            s0 = s1 = s2 = zero
            for r in range(lo, hi):
                ur = x[r] * u[r]
                s0 += ur * v0[r]
                s1 += ur * v1[r]
                s2 += ur * v2[r]
            out[i, blocks[b, 4]], out[i, blocks[b, 5]], out[i, blocks[b, 6]] = s0, s1, s2


def _centered_add_kernel(u, means, raw, part, out, at, rows, block, zero):  # pragma: no cover - compiled
    """``out[at + i, c] += sum(r y_i (y_c + m_c))`` and ``out[at + i, d] += sum(r y_i)`` over ``rows``, from
    ``u = [sqrt(r) y, sqrt(r)]`` (d + 1 rows), ``y = x - m`` (``raw``: ``m`` taken as 0).

    The symmetric ``sum r y y^T`` and ``sum r y`` are the lower triangle of
    ``u u^T`` (:func:`_dots_kernel` with ``lower``), plus ``sum r y m^T``; each block of
    ``block`` rows is added into the float64 ``out``.
    """
    d = u.shape[0] - 1
    for s0 in range(0, rows, block):
        _dots_jit(u, u, part, zero, s0, min(block, rows - s0), d + 1, True)
        for i in range(d):
            ai = np.float64(part[d, i])
            row = out[at + i]
            for c in range(i + 1):
                v = np.float64(part[i, c])
                row[c] += v if raw else v + ai * np.float64(means[c])
            for c in range(i + 1, d):
                v = np.float64(part[c, i])
                row[c] += v if raw else v + ai * np.float64(means[c])
            row[d] += ai


def _rows_minus_kernel(x, shift, out):  # pragma: no cover - compiled
    """``out[a, :t] = x[:, a] - shift[a]`` (in float64, rounded to ``out``'s type), ``t`` the rows of ``x``."""
    t, d = x.shape
    block = 64  # rows read per sweep of the features: each row's cache lines read once
    for r0 in range(0, t, block):
        # Unsigned bounds: LLVM then knows no index wraps around (1.2-1.9x faster designs).
        lo, hi = np.uint64(r0), np.uint64(min(r0 + block, t))
        for a in range(d):
            c = shift[a]
            ya = out[a]
            for r in range(lo, hi):
                ya[r] = np.float64(x[r, a]) - c  # in float64, as numpy's subtract computes it


def _matmul_kernel(gemm, a, b, c, one, zero, cols):  # pragma: no cover - compiled
    """``c = a @ b`` by the C GEMM at the address ``gemm``, in calls of at most ``cols`` columns of ``b``: ``a``
    (m, q), ``b`` (q, n), ``c`` (m, n), each with unit column stride (C-contiguous, or a block of columns of a
    C-contiguous array)."""
    m, q = a.shape
    n = b.shape[1]
    row_major, plain = np.int32(101), np.int32(111)
    item = a.itemsize
    lda, ldb, ldc = a.strides[0] // item, b.strides[0] // item, c.strides[0] // item
    for s in range(0, n, cols):
        w = min(cols, n - s)
        _gemm_call(gemm, row_major, plain, plain, np.int64(m), np.int64(w), np.int64(q), one, np.intp(a.ctypes.data),
                   np.int64(lda), np.intp(b.ctypes.data + s * item), np.int64(ldb), zero,
                   np.intp(c.ctypes.data + s * item), np.int64(ldc))


def _dots_add_kernel(a, b, part, out, at, ka, rows, block, zero):  # pragma: no cover - compiled
    """``out[at + i, j] += sum(a[i, :rows] * b[j, :rows])`` for ``i < ka``: :func:`_dots_kernel` over blocks of
    ``block`` rows into ``part``, each block's sums added into ``out`` (float64 totals of float32 blocks)."""
    kb = b.shape[0]
    for s0 in range(0, rows, block):
        _dots_jit(a, b, part, zero, s0, min(block, rows - s0), ka)
        for i in range(ka):
            for j in range(kb):
                out[at + i, j] += part[i, j]


# The compiled kernels as the kernels above call them (set by _compile before their first call).
_normalize_jit = _design_jit = _dots_jit = _dots_add_jit = _matmul_jit = _gemm_call = _panel_logp_jit = None
_pairs_dots_jit = _rows_minus_jit = _centered_add_jit = None
_wide_vectors = None


def _jit(numba, function, fastmath=("contract",)):
    options = dict(nogil=True, boundscheck=False, error_model="numpy", fastmath=set(fastmath))
    try:
        return numba.njit(cache=True, **options)(function)
    except Exception:  # noqa: BLE001 - no writable cache location: compile in every process
        return numba.njit(**options)(function)


def _numpy_blas() -> ctypes.CDLL | None:
    """numpy's own BLAS library (OpenBLAS in numpy's wheels), loaded, or None where it is not found."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency of scikit-learn
        return None
    home = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    libs = [info["filepath"] for info in threadpool_info() if info.get("user_api") == "blas"]
    mine = [path for path in libs if os.path.abspath(path).startswith(home) and "numpy" in os.path.basename(
        os.path.dirname(path))]
    for path in mine or (libs if len(libs) == 1 else []):
        try:
            return ctypes.CDLL(path)
        except OSError:  # pragma: no cover
            continue
    return None


def _gemm_functions() -> dict:
    """The addresses of numpy's ``dgemm`` / ``sgemm`` 64-bit-integer C interface, per dtype (empty where not found)."""
    lib = _numpy_blas()
    if lib is None:
        return {}
    found = {}
    for dtype, letter in ((np.dtype(np.float64), "d"), (np.dtype(np.float32), "s")):
        for name in (f"scipy_cblas_{letter}gemm64_", f"cblas_{letter}gemm64_", f"cblas_{letter}gemm_64"):
            function = getattr(lib, name, None)
            if function is not None:
                found[dtype] = np.intp(ctypes.cast(function, ctypes.c_void_p).value)
                break
    return found


def _gemm_intrinsic():
    """``_gemm_call(address, order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)``: a call of
    the C function at ``address`` (the matrices' addresses as integers), compiled into the kernel.

    The address is an argument, not a constant, so the cached kernels stay valid
    in every process; an integer argument, not a numba function object, so a
    call's dispatch types only arrays and numbers (a function object took
    about 20 us a call to type, with the GIL held).
    """
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def gemm_call(typingctx, address, order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        sig = types.void(address, order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in signature.args[1:]])
            builder.call(builder.inttoptr(args[0], fnty.as_pointer()), args[1:])
            return context.get_dummy_value()

        return sig, codegen

    return gemm_call


def _wide_intrinsic():
    """``_wide_vectors()``: let LLVM vectorize the function that calls it with 512-bit vectors.

    LLVM's x86 targets prefer 256-bit vectors on processors with AVX-512 (wider
    ones once slowed the clock); the function attribute ``prefer-vector-width``
    lifts that for one kernel. Processors without AVX-512 ignore it. Where this
    llvmlite cannot write the attribute, it writes nothing.
    """
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def wide_vectors(typingctx):
        def codegen(context, builder, signature, args):
            try:  # llvmlite checks attribute names against a fixed list; this one is a key=value string
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:  # noqa: BLE001 - only speed depends on it
                pass
            return context.get_dummy_value()

        return types.none(), codegen

    return wide_vectors


def _compile() -> None:
    """Set up numba's dispatchers of the kernels (compiled on their first call), or None where numba is missing."""
    global _normalize_jit, _design_jit, _dots_jit, _dots_add_jit, _matmul_jit, _gemm_call, _pairs_dots_jit
    global _rows_minus_jit, _wide_vectors, _panel_logp_jit, _centered_add_jit
    try:
        import numba
    except Exception:  # noqa: BLE001 - not installed, or broken against this numpy
        _STATE.update(_NO_KERNELS, gemm={})
        return
    _STATE["kernel"] = _normalize_jit = _jit(numba, _normalize_kernel)
    _STATE["design"] = _design_jit = _jit(numba, _design_kernel)
    # Reassociation lets LLVM split each dot product into vector lanes (the sums change in the last digits).
    _STATE["dots"] = _dots_jit = _jit(numba, _dots_kernel, ("contract", "reassoc"))
    _dots_add_jit = _jit(numba, _dots_add_kernel)
    _centered_add_jit = _jit(numba, _centered_add_kernel)
    _wide_vectors = _wide_intrinsic()
    _pairs_dots_jit = _jit(numba, _pairs_dots_kernel, ("contract", "reassoc"))
    _rows_minus_jit = _jit(numba, _rows_minus_kernel)
    _STATE["rows-normalize"] = _jit(numba, _rows_normalize_kernel)
    try:
        _STATE["gemm"] = _gemm_functions()
        _gemm_call = _gemm_intrinsic()
        _matmul_jit = _jit(numba, _matmul_kernel)
        _panel_logp_jit = _jit(numba, _panel_logp_kernel)
    except Exception:  # noqa: BLE001 - no usable C interface: the panel loop stays in Python
        _STATE["gemm"] = {}
    _STATE["product"] = _jit(numba, _product_kernel) if _STATE["gemm"] else None
    _STATE["product-logp"] = _jit(numba, _product_logp_kernel) if _STATE["gemm"] else None
    _STATE["pairs"] = _jit(numba, _pairs_kernel) if _STATE["gemm"] else None
    _STATE["residual"] = _jit(numba, _residual_kernel) if _STATE["gemm"] else None
    _STATE["rows"] = _jit(numba, _rows_kernel) if _STATE["gemm"] else None
    _STATE["profile"] = _jit(numba, _profile_kernel) if _STATE["gemm"] else None


def _kernel():
    state = _STATE.get("kernel", False)
    if state is False:
        with _LOCK:
            if "kernel" not in _STATE:
                _STATE["on"] = os.environ.get(ENV_SWITCH, "1") != "0"
                _STATE["constants"] = {dt: _constants(dt) for dt in FLOORS}
                if _STATE["on"]:
                    _compile()
                else:  # switched off: numba is not even imported (its 50 MiB stay free)
                    _STATE.update(_NO_KERNELS, gemm={})
            state = _STATE["kernel"]
    return state


def _native_float(x: np.ndarray) -> bool:
    """float32 or float64 in this machine's byte order: data the kernels take (not float16, longdouble, '>f8')."""
    return x.dtype in FLOORS


def _codes(x: np.ndarray) -> bool:
    """Booleans, integers or native floats: data the discrete kernel takes."""
    return x.dtype.isnative and (x.dtype.kind in "biu" or _native_float(x))


def products_run() -> bool:
    """Whether the whole-chunk kernels run (compiled, and numpy's BLAS C interface found)."""
    return enabled() and _STATE.get("product") is not None


def _disable(exc: Exception) -> None:
    """After a kernel failed to compile: warn once, and let the numpy kernels run from now on."""
    if _STATE.get("kernel") is not None:
        warnings.warn(f"dask-em's compiled E-step kernels could not be compiled ({exc!r}); "
                      "the numpy kernels run instead.", RuntimeWarning, stacklevel=3)
    _STATE.update(_NO_KERNELS)


def enabled() -> bool:
    """Whether the compiled kernels run: numba is importable and ``DASK_EM_COMPILED`` was not ``0``.

    The environment is read once, when a process's first E-step runs.
    """
    return _kernel() is not None and _STATE["on"]


_EMPTY = np.empty(0)
_FAILED = object()


def _weights(w: np.ndarray | None) -> np.ndarray:
    """Row weights as the kernels take them: contiguous float64, or an empty array for none."""
    return _EMPTY if w is None else np.ascontiguousarray(w, dtype=np.float64)


def _panel_buffers(buffers, prefix: str, dtype: np.dtype, kp: int, width: int, rows: int) -> tuple:
    """A whole-chunk kernel's thread buffers for panels of ``rows``: design, log-densities, statistics, work rows."""
    return (buffers(f"{prefix}-design", (width * rows,), dtype), buffers(f"{prefix}-logp", (kp * rows,), dtype),
            buffers(f"{prefix}-part", (kp, width), dtype), buffers(f"{prefix}-lse", (5, rows), dtype))


def _run(name: str, record: dict, *args):
    """Call the compiled kernel ``name`` on ``args`` and a fresh (3,) array of its likelihood sums, added into
    ``record``; its result, or ``_FAILED`` where it could not be compiled (nothing was written, numpy runs)."""
    sums = np.zeros(3)
    try:
        result = _STATE[name](*args, sums)
    except Exception as exc:  # noqa: BLE001 - a compiler failure must not stop a fit
        with _LOCK:
            _disable(exc)
        return _FAILED
    record["loglik"] += float(sums[0])
    record["wsum"] += float(sums[1])
    record["entropy"] += float(sums[2])
    return result


def normalize(wlp: np.ndarray, w: np.ndarray | None, entropy: bool, record: dict, work: np.ndarray) -> bool:
    """Overwrite the (K, P) log-densities ``wlp`` with the responsibilities times the row weights ``w``.

    Adds the panel's (weighted) log-likelihood, weight and, with ``entropy``,
    ``sum r log r`` into ``record``'s ``loglik``, ``wsum`` and ``entropy``.
    ``work``: a (5, P) or wider C-contiguous array of ``wlp``'s dtype.
    Returns False, changing nothing, where the compiled kernel does not
    apply (numba absent or switched off, another dtype or layout): the
    caller then runs the numpy kernel. A row holding NaN, or whose every
    component is ``-inf``, makes the log-likelihood NaN, as numpy's does.
    """
    dtype, p = wlp.dtype, wlp.shape[1]
    if dtype not in FLOORS or not wlp.flags.c_contiguous or wlp.shape[0] == 0 or not enabled():
        return False
    if work.dtype != dtype or not work.flags.c_contiguous or work.shape[0] < 5 or work.shape[1] < p:
        raise ValueError(f"normalize needs a C-contiguous (5, >= {p}) {dtype} work array; received "
                         f"{work.shape} {work.dtype}")
    if w is not None and np.shape(w) != (p,):
        raise ValueError(f"normalize needs one weight per row ({p}); received shape {np.shape(w)}")
    floats, ints = _STATE["constants"][dtype]
    return _run("kernel", record, wlp, _weights(w), dtype.type(FLOORS[dtype]), bool(entropy), work, floats,
                ints) is not _FAILED




NORMALIZE_ROWS = 512  # rows per panel of normalize_rows (its (K, rows) panel and work rows stay in L1/L2)


def normalize_rows(wlp: np.ndarray, proba: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Each row's log-sum-exp of the (n, K) float64 log-densities ``wlp``, and with ``proba`` the
    responsibilities (n, K), in one call that releases the GIL (the E-step's log-sum-exp, in panels).

    Rows with NaN give NaN; a row whose largest value is not finite is left to the caller (its result is
    not finite). None, computing nothing, where the compiled kernels do not run (other dtypes, layouts).
    """
    if wlp.dtype != np.float64 or wlp.ndim != 2 or not wlp.flags.c_contiguous or not enabled():
        return None
    kernel = _STATE.get("rows-normalize")
    if kernel is None:
        return None
    n, k = wlp.shape
    rows = max(1, min(NORMALIZE_ROWS, n))
    fc, ic = _STATE["constants"][wlp.dtype]
    log_norm = np.empty(n)
    out = np.empty((n, k)) if proba else np.empty((0, k))
    buf, work = aligned_empty(k * rows, np.float64), aligned_empty(5 * rows, np.float64).reshape(5, rows)
    try:
        kernel(wlp, _EMPTY, wlp.dtype.type(FLOORS[wlp.dtype]), fc, ic, buf, work, log_norm, out, np.zeros(3))
    except Exception as exc:  # noqa: BLE001 - compiling failed: numpy runs
        with _LOCK:
            _disable(exc)
        return None
    return log_norm, (out if proba else None)


def _design_kernel(x, shift, pi, pj, out):  # pragma: no cover - compiled
    """The compiled body of :func:`product_design`."""
    t, d = x.shape
    q = pi.shape[0]
    # _rows_minus_kernel's loop, inline: called on out[q : q + d] (a slice numba types as non-contiguous)
    # the float32 design took 1.2x as long at d=16.
    block = 64
    for r0 in range(0, t, block):
        lo, hi = np.uint64(r0), np.uint64(min(r0 + block, t))
        for a in range(d):
            c = shift[a]
            ya = out[q + a]
            for r in range(lo, hi):
                ya[r] = np.float64(x[r, a]) - c
    for m in range(q):
        left, right, prod = out[q + pi[m]], out[q + pj[m]], out[m]
        for r in range(t):
            prod[r] = left[r] * right[r]


def product_design(x: np.ndarray, shift: np.ndarray, pairs: tuple, out: np.ndarray) -> bool:
    """Write the product design of the rows ``x`` into the columns ``out[:, :len(x)]``, in one call.

    The design of a row ``y = x - shift`` is ``[y_i y_j for (i, j) in pairs, y, 1]``
    (the Gaussian moment design of full and tied covariances at small d, and
    the diagonal design, whose pairs are ``(i, i)``); its last row (the ones)
    is the caller's. ``out``: C-contiguous, of the compute dtype. Returns
    False, writing nothing, where the compiled kernel does not run.
    """
    if out.dtype not in FLOORS or not out.flags.c_contiguous or not _native_float(x) or not enabled():
        return False
    try:
        _STATE["design"](x, shift, pairs[0], pairs[1], out)
    except Exception as exc:  # noqa: BLE001 - compiling failed (before any value was written): numpy runs
        with _LOCK:
            _disable(exc)
        return False
    return True


def product_estep(x: np.ndarray, w: np.ndarray | None, shift: np.ndarray, pairs: tuple, coef: np.ndarray, k: int,
                  panel: int, entropy: bool, stop_at_nan: bool, record: dict, buffers) -> bool | None:
    """One restart's E-step on one chunk of a product design, in one call that releases the GIL.

    ``coef`` (Kp, width), in the compute dtype: every component's weighted
    log-density is a row of ``coef @ phi``, ``phi`` the design of a panel
    (see :func:`product_design`; rows of ``coef`` past ``k`` are zero
    padding, for a faster GEMM). Panels of ``panel`` rows: the design, the
    log-density GEMM, the responsibilities (:func:`normalize`'s kernel), the
    statistics GEMM, summed in float64 into ``record["moments"]`` (k, width),
    the likelihood into its scalars. Where :func:`stats_rows` gives taller
    statistics panels than ``panel`` rows (a wide design), the pair kernel
    runs instead: the same sums in another order. ``buffers(name, shape,
    dtype)`` gives the thread's work arrays (:func:`dask_em.family.work_array`).

    Returns True when done; False when ``stop_at_nan`` and a panel's
    log-likelihood was NaN (``record`` partly updated); None, doing
    nothing, where this kernel does not run (the caller runs its own).
    """
    dtype = coef.dtype
    if dtype not in FLOORS or not _native_float(x) or not products_run():
        return None
    gemm = _STATE["gemm"].get(dtype)
    if gemm is None:
        return None
    kp, width = coef.shape
    rows = max(1, min(panel, len(x)))
    floats, ints = _STATE["constants"][dtype]
    shift, coef = np.ascontiguousarray(shift, dtype=np.float64), np.ascontiguousarray(coef)
    d = x.shape[1]
    tall = stats_rows(rows, d, kp, dtype)
    gemm_cols = _gemm_columns(width)
    # The pair kernel's blocks share their first row; a design whose products share none (the diagonal
    # design's squares) would leave most of their places empty, and keeps the design's own product.
    if tall > rows and len(x) > rows and 3 * len(pair_blocks(pairs, d)) <= PAIRS_MAX_PLACES * width:
        rows = min(rows, gemm_cols)
        prefix = f"compiled-pairs-{dtype.char}"
        design = buffers(f"{prefix}-design", (width * rows,), dtype)
        logp, work = buffers(f"{prefix}-logp", (kp * tall,), dtype), buffers(f"{prefix}-lse", (5, tall), dtype)
        part, ybuf = buffers(f"{prefix}-part", (k, width + 1), dtype), buffers(f"{prefix}-y", ((d + 1) * tall,), dtype)
        done = _run("pairs", record, x, _weights(w), shift, pairs[0], pairs[1], pair_blocks(pairs, d), coef,
                    int(k), int(rows), int(tall), bool(entropy), bool(stop_at_nan), dtype.type(FLOORS[dtype]), floats,
                    ints, design, logp, part, work, ybuf, record["moments"], gemm)
        return None if done is _FAILED else bool(done)
    design, logp, part, work = _panel_buffers(buffers, f"compiled-{dtype.char}", dtype, kp, width, rows)
    done = _run("product", record, x, _weights(w), shift, pairs[0], pairs[1], coef, int(k), int(rows),
                int(gemm_cols), bool(entropy), bool(stop_at_nan), dtype.type(FLOORS[dtype]), floats, ints, design,
                logp, part, work, record["moments"], gemm)
    return None if done is _FAILED else bool(done)


def product_logp(x: np.ndarray, shift: np.ndarray, pairs: tuple, coef: np.ndarray, k: int, panel: int,
                 out: np.ndarray, buffers) -> bool:
    """The weighted log-densities of the rows ``x`` on a product design into ``out`` (n, K), in one call that
    releases the GIL: :func:`product_estep`'s panels (the design, its log-density GEMM) without the statistics.

    ``coef`` (Kp, width) float64, as :func:`product_estep` takes it; ``out``
    C-contiguous float64. False, writing nothing, where the kernel does not
    run (the caller runs its own).
    """
    if (coef.dtype != np.float64 or out.dtype != np.float64 or not out.flags.c_contiguous or not _native_float(x)
            or not products_run() or _STATE.get("product-logp") is None):
        return False
    gemm = _STATE["gemm"].get(coef.dtype)
    if gemm is None:
        return False
    kp, width = coef.shape
    gemm_cols = _gemm_columns(width)
    rows = max(1, min(panel, gemm_cols, len(x)))
    design = buffers("compiled-d-design", (width * rows,), coef.dtype)
    logp = buffers("compiled-d-logp", (kp * rows,), coef.dtype)
    try:
        _STATE["product-logp"](x, np.ascontiguousarray(shift, dtype=np.float64), pairs[0], pairs[1],
                               np.ascontiguousarray(coef), int(k), int(rows), int(gemm_cols), 1.0, 0.0, design, logp,
                               gemm, out)
    except Exception as exc:  # noqa: BLE001 - compiling failed (before any value was written): numpy runs
        with _LOCK:
            _disable(exc)
        return False
    return True


# The pair kernel runs where the design's panels are at most this many bytes a design column (64 rows
# float64, 128 float32: the moment design at d >= ~45 on a 2 MiB L2). Measured on one thread (one BLAS
# thread), K=8, Intel Xeon (AVX-512, 2 MiB L2), seconds per 500k rows, design against pair kernel, same
# process: d=64 (32 rows) 1.13-1.18 against 0.90-0.93, float32 0.65-0.69 against 0.54-0.57; d=48 (64
# rows) 0.60 against 0.50; d=32 (128 rows) 0.25-0.26 against 0.24, float32 (256 rows) 0.15 both; d=16
# (512 rows) 0.32 against 0.34-0.37.
PAIRS_MAX_PANEL_BYTES = 512
# Its statistics panels: rows whose d + 1 rows of y and K of log-densities take at most this share of one
# core's L2 (d=64: 256 rows float64, 512 float32; minimum and median of five runs, float64: 0.96-0.97 s
# at 256 rows, 0.97-0.98 at 512, 0.98-1.03 at 128, 1.08-1.11 at 1024; float32 0.50-0.52 at 256-1024,
# 0.53-0.54 at 128), and at most float32's blocks of sums (STATS_BLOCK_FLOAT32).
PAIRS_L2_SHARE = 0.125
PAIRS_MAX_ROWS = STATS_BLOCK_FLOAT32
# ... and where its blocks hold at most this many places a design column (the moment design: 1.06 at
# d=64, 1.29 at d=5; the diagonal design's squares: about 2).
PAIRS_MAX_PLACES = 1.5


# The log-density GEMMs of the product and pair kernels take at most this many design values at a time
# (a power of two of its columns, the panel's rows). OpenBLAS's SkylakeX kernels run (8, width) @ (width,
# t) at half speed or less once the design holds more than about 2**17 values, in float64 and float32
# alike (one thread, Intel Xeon, GFLOP/s): width 2145 (d=64) float64 56 at t=32 against 25 at 64-512,
# float32 97 against 54; width 153 (d=16) float32 125 at t=512 against 61 at 1024; width 561 (d=32)
# float32 101 at 128 against 55 at 256. Its Haswell kernels run every such split within 10-20% of one
# call. The whole kernel, float32, seconds per 2M rows, one call against split: d=16 0.200 against 0.170,
# d=32 0.707 against 0.587, d=48 1.447 against 1.196, d=64 (pair kernel) 2.71 against 2.08.
GEMM_MAX_VALUES = 2**17


def _gemm_columns(width: int) -> int:
    """Columns of the design (rows of data) per log-density GEMM: a power of two (at least 1)."""
    cols = 1
    while cols * 2 * width <= GEMM_MAX_VALUES:
        cols *= 2
    return cols


def stats_rows(panel: int, d: int, kp: int, dtype: np.dtype) -> int:
    """Rows per statistics panel of :func:`product_estep` on a design in panels of ``panel`` rows: a
    power-of-two multiple of ``panel`` (the pair kernel), or ``panel`` itself (the design's own product)."""
    itemsize = np.dtype(dtype).itemsize
    if panel * itemsize > PAIRS_MAX_PANEL_BYTES:
        return panel
    budget = min(int(core_caches()[0] * PAIRS_L2_SHARE) // ((d + 1 + kp) * itemsize), PAIRS_MAX_ROWS)
    rows = panel
    while rows * 2 <= budget:
        rows *= 2
    return rows


_BLOCKS: dict = {}


def pair_blocks(pairs: tuple, d: int) -> np.ndarray:
    """(B, 7) blocks ``u, v0, v1, v2, m0, m1, m2`` of :func:`_pairs_dots_kernel` for the design ``[y_i y_j for
    (i, j) in pairs, y, 1]``: each design column ``m`` once, as the product of rows ``u`` and ``v`` of
    ``[y, 1]`` (row ``d`` the ones); a block's unused places point at the scratch column ``width``."""
    pi, pj = pairs
    key = (id(pi), id(pj), d)
    hit = _BLOCKS.get(key)
    if hit is not None and hit[0] is pi and hit[1] is pj:
        return hit[2]
    q = len(pi)
    width = q + d + 1
    by_first: dict[int, list] = {}
    for m, (i, j) in enumerate(zip(pi.tolist(), pj.tolist())):
        by_first.setdefault(min(i, j), []).append((max(i, j), m))
    by_first[d] = [(a, q + a) for a in range(d)] + [(d, q + d)]  # y_a * 1, and 1 * 1
    out = []
    for u in sorted(by_first):
        cols = sorted(by_first[u])
        while len(cols) % 3:
            cols.append((u, width))
        for b in range(0, len(cols), 3):
            (v0, m0), (v1, m1), (v2, m2) = cols[b : b + 3]
            out.append((u, v0, v1, v2, m0, m1, m2))
    blocks = np.array(out, dtype=np.int64).reshape(-1, 7)
    with _LOCK:
        if len(_BLOCKS) >= 64:  # pairs made afresh for each call (the library's own are cached): stay bounded
            _BLOCKS.clear()
        _BLOCKS[key] = (pi, pj, blocks)
    return blocks


def residual_estep(x: np.ndarray, w: np.ndarray | None, shift: np.ndarray, stacked: np.ndarray,
                   log_const: np.ndarray, means: np.ndarray, raw: bool, tile: int, entropy: bool, stop_at_nan: bool,
                   record: dict, buffers) -> bool | None:
    """One restart's E-step on one chunk of the residual design of full/tied covariances, in one GIL-free call.

    Tiles of ``tile`` rows: the design ``[x - c, 1]`` (d + 1, t), one GEMM
    with ``stacked`` (K d, d + 1), the factors ``[U_k^T, -U_k^T m_k]``
    stacked over the components, for every whitened residual; their squares
    summed per component and ``log_const`` (K,) added give the weighted
    log-densities; then the responsibilities (:func:`normalize`'s kernel),
    their sums into ``record["n"]``, and ``sum_i r_ik (x_i - m_k) [x_i - c,
    1]`` (``raw``: ``x_i - c`` in place of ``x_i - m_k``, ``means`` taken as 0)
    into ``record["xw"]`` (K d, d + 1), float64. ``stacked``, ``log_const``
    and ``means`` are in the compute dtype. Returns as :func:`product_estep`.
    """
    dtype = stacked.dtype
    if dtype not in FLOORS or not _native_float(x) or not products_run() or _STATE.get("residual") is None:
        return None
    gemm = _STATE["gemm"].get(dtype)
    if gemm is None:
        return None
    kd, width = stacked.shape
    k = log_const.shape[0]
    rows = max(1, min(tile, len(x)))
    design = buffers(f"compiled-{dtype.char}-residual-design", (width * rows,), dtype)
    resid = buffers(f"compiled-{dtype.char}-residual", (kd * rows,), dtype)
    ybuf = buffers(f"compiled-{dtype.char}-residual-u", (width * rows,), dtype)
    logp = buffers(f"compiled-{dtype.char}-residual-logp", (k * rows,), dtype)
    part = buffers(f"compiled-{dtype.char}-residual-part", (width, width), dtype)
    work = buffers(f"compiled-{dtype.char}-residual-lse", (5, rows), dtype)
    floats, ints = _STATE["constants"][dtype]
    done = _run("residual", record, x, _weights(w), np.ascontiguousarray(shift, dtype=np.float64),
                np.ascontiguousarray(stacked), np.ascontiguousarray(log_const, dtype=dtype).reshape(-1),
                np.ascontiguousarray(means, dtype=dtype), bool(raw), int(k), int(rows), bool(entropy),
                bool(stop_at_nan), dtype.type(FLOORS[dtype]), floats, ints, design, resid, ybuf, logp, part, work,
                record["n"], record["xw"], gemm)
    return None if done is _FAILED else bool(done)


def profile_estep(x: np.ndarray, w: np.ndarray | None, shift: np.ndarray, group: np.ndarray, cols: np.ndarray,
                  pidx: np.ndarray, stacked: np.ndarray, means: np.ndarray, cond: np.ndarray, log_det_mm: np.ndarray,
                  log_const: np.ndarray, tile: int, entropy: bool, record: dict, pattern_mass: np.ndarray,
                  buffers) -> bool:
    """One full/tied restart's rows that each miss s values, in one call that releases the GIL (float64).

    The missing values are profiled out of the full quadratic form (see
    :meth:`dask_em._incomplete._FullWork.profile`): tiles of ``tile`` of
    the rows ``x[group]``, each missing the coordinates ``cols`` (n, s) of
    its pattern ``pidx`` (n,); per tile the design ``[x - c; 1]`` with zeros
    at the missing values, one GEMM with ``stacked`` (K d, d + 1),
    ``[L_k, -L_k mu_k]``, then per row and component the conditional step
    with ``cond`` (P, K, s, s), the patterns' ``(L_mm)^-1``, and
    ``log_det_mm`` (P, K); ``log_const`` (K,) holds ``log w_k - ((d - s) log
    2 pi + log det S_k) / 2``. The responsibilities' sums go into
    ``record["n"]``, per pattern into ``pattern_mass`` (K, P), and
    ``sum_i r_ik (x^_i - mu_k) [x^_i - mu_k; 1]`` into ``record["ab"]``
    (K d, d + 1), the likelihood into its scalars. Returns False, doing
    nothing, where this kernel does not run.
    """
    if not _native_float(x) or not products_run() or _STATE.get("profile") is None:
        return False
    gemm = _STATE["gemm"].get(np.dtype(np.float64))
    if gemm is None:
        return False
    f64 = np.dtype(np.float64)
    kd, width = stacked.shape
    k, d = means.shape
    rows = max(1, min(tile, len(group)))
    design = buffers("compiled-d-profile-design", (width * rows,), f64)
    g = buffers("compiled-d-profile-g", (kd * rows,), f64)
    e = buffers("compiled-d-profile-e", (k * width * rows,), f64)
    logp = buffers("compiled-d-profile-logp", (k * rows,), f64)
    wt = buffers("compiled-d-profile-w", (rows,), f64)
    part = buffers("compiled-d-profile-part", (width, width), f64)
    work = buffers("compiled-d-profile-lse", (5, rows), f64)
    floats, ints = _STATE["constants"][f64]
    ints64 = [np.ascontiguousarray(a, dtype=np.int64) for a in (group, cols, pidx)]
    return _run("profile", record, x, _weights(w), *ints64, np.ascontiguousarray(shift, dtype=np.float64),
                np.ascontiguousarray(stacked, dtype=np.float64), np.ascontiguousarray(means, dtype=np.float64),
                np.ascontiguousarray(cond, dtype=np.float64), np.ascontiguousarray(log_det_mm, dtype=np.float64),
                np.ascontiguousarray(log_const, dtype=np.float64), int(rows), bool(entropy), FLOORS[f64], floats,
                ints, design, g, e, logp, wt, part, work, record["n"], pattern_mass, record["ab"],
                gemm) is not _FAILED


def rows_estep(x: np.ndarray, w: np.ndarray | None, onehot: np.ndarray | None, coef: np.ndarray, panel: int,
               entropy: bool, record: dict, sums: np.ndarray, buffers) -> bool:
    """One restart's E-step on one chunk of a discrete family's design, in one call that releases the GIL.

    The design of a row is ``[x, 1]`` (``onehot`` None: Bernoulli) or its
    one-hot codes and a 1 (``onehot``: the (d + 1,) offsets of each feature's
    categories; a code outside its feature's range sets nothing). ``coef``
    (K, width) float64: every component's weighted log-density is a row of
    ``coef @ z.T``. Panels of ``panel`` rows: the design, the log-density
    GEMM, the responsibilities (:func:`normalize`'s kernel), the statistics
    GEMM, summed into ``sums`` (K, width); the likelihood into ``record``.
    Returns False, doing nothing, where this kernel does not run.
    """
    if not _codes(x) or coef.dtype != np.float64 or not enabled() or _STATE.get("rows") is None:
        return False
    gemm = _STATE["gemm"].get(coef.dtype)
    if gemm is None:
        return False
    k, width = coef.shape
    rows = max(1, min(panel, len(x)))
    design, logp, part, work = _panel_buffers(buffers, "compiled-rows", coef.dtype, k, width, rows)
    offsets = _NO_OFFSETS if onehot is None else np.ascontiguousarray(onehot, dtype=np.int64)
    floats, ints = _STATE["constants"][coef.dtype]
    return _run("rows", record, x, _weights(w), onehot is not None, offsets, np.ascontiguousarray(coef), int(k),
                int(rows), bool(entropy), FLOORS[coef.dtype], floats, ints, design, logp, part, work, sums,
                gemm) is not _FAILED


def _frozen(values) -> np.ndarray:
    """A read-only int64 array: the layouts' pairs are read-only, and numba compiles those apart."""
    out = np.array(values, dtype=np.int64)
    out.flags.writeable = False
    return out


_WARM_PAIRS = (_frozen([0, 1, 2]), _frozen([0, 1, 2]))
_WARM_MOMENT_PAIRS = (_frozen([0, 1, 2, 0, 1, 2]), _frozen([0, 1, 2, 1, 2, 0]))
_NO_OFFSETS = np.zeros(1, dtype=np.int64)


def warm_up() -> bool:
    """Compile every kernel for float64 and float32 now (or load them from numba's cache); True if they run.

    A process compiles each kernel on first use (seconds, once per machine where
    the cache is writable); a container image can run this at build time, with
    ``NUMBA_CACHE_DIR`` set to a directory its users can read.
    """
    if not enabled():
        return False
    buffers = lambda name, shape, dt: np.empty(shape, dtype=dt)  # noqa: E731
    for dtype in FLOORS:
        x = np.linspace(-1.0, 1.0, 24).reshape(8, 3)
        pairs = _WARM_PAIRS
        coef = np.full((2, 7), -0.5, dtype=dtype)
        moment_coef = np.full((2, 10), -0.5, dtype=dtype)
        moment_record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((2, 10))}
        record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((2, 7)), "n": np.zeros(2),
                  "xw": np.zeros((6, 4))}
        stacked, const, means = np.eye(6, 4, dtype=dtype), np.zeros(2, dtype=dtype), np.zeros((2, 3), dtype=dtype)
        # Data in float64 or float32, computed in either (each pair of dtypes is compiled apart).
        for data in (np.dtype(np.float64), np.dtype(np.float32)):
            for w in (None, np.ones(8)):
                product_estep(x.astype(data), w, np.zeros(3), pairs, coef, 2, 8, w is None, False, record, buffers)
                # Panels of 4 rows of a moment design (its pairs ordered as _vech_pairs's): the pair kernel.
                product_estep(x.astype(data), w, np.zeros(3), _WARM_MOMENT_PAIRS, moment_coef, 2, 4, w is None, False,
                              moment_record, buffers)
            residual_estep(x.astype(data), None, np.zeros(3), stacked, const, means, False, 8, False, False, record,
                           buffers)
            rows, one = np.arange(8), np.zeros((8, 1), dtype=np.int64)
            profile_estep(x.astype(data), None, np.zeros(3), rows, one, one[:, 0], np.eye(6, 4), np.zeros((2, 3)),
                          np.ones((1, 2, 1, 1)), np.zeros((1, 2)), np.zeros(2), 8, False,
                          {**record, "ab": np.zeros((6, 4))}, np.zeros((2, 1)), buffers)
        out = np.ones((7, 8), dtype=dtype)
        product_design(x, np.zeros(3), pairs, out)
        normalize(np.zeros((2, 8), dtype=dtype), None, True, record, np.empty((5, 8), dtype=dtype))
    for proba in (False, True):  # inference's log-sum-exp of (n, K) rows
        normalize_rows(np.zeros((8, 2)), proba)
    for pairs, width in ((_WARM_PAIRS, 7), (_WARM_MOMENT_PAIRS, 10)):  # inference's log-densities
        for data in (np.float64, np.float32):
            product_logp(np.zeros((8, 3), dtype=data), np.zeros(3), pairs, np.zeros((2, width)), 2, 4,
                         np.empty((8, 2)), buffers)
    codes = np.zeros((8, 2), dtype=np.int64)
    for onehot, data in ((None, codes.astype(bool)), (np.array([0, 2, 4]), codes), (None, codes)):
        width = 3 if onehot is None else 5
        rows_estep(data, None, onehot, np.full((2, width), -0.5), 8, False, record, np.zeros((2, width)), buffers)
    return enabled()
