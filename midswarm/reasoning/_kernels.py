"""Single-threaded numba kernels behind exact search.

Why not BLAS: a multi-threaded sgemv is fast on an idle machine, but in a
swarm many processes share the cores, and a BLAS call that waits for a
descheduled worker thread takes milliseconds instead of a fraction of one.
These kernels run on the calling thread only (and release the GIL).

Why int8: an exact top-k scan over n x d float32 rows is bound by memory
traffic.  :func:`scan_bounds` reads an int8 copy of the rows instead (a
quarter of the bytes) and computes, for every row, an interval that surely
holds its exact score: with per-row scale ``s`` and codes ``c = round(x / s)``,
``|x.q - s (c.q)| <= (s / 2) |q|_1``, widened for float32 rounding.  The k-th
largest lower bound ``L`` is a score that k rows surely reach, so any row
whose upper bound is below ``L`` cannot be in the top k.  Only the rows left
are scored exactly (:func:`exact_keys`, float64 sums of the stored float32
values), which makes the result the exact top-k, not an approximation.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["collect_at_least", "exact_keys", "scan_bounds"]

# Reassociation lets the inner products vectorise; no assumptions about inf/NaN,
# which the heap below uses.
_FAST = {"reassoc", "contract"}
_INT8_MAX = 127.0  # the code range; keep in step with _vectors.quantize
_F32_EPS = 2.0**-24


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def exact_keys(data: np.ndarray, rows: np.ndarray, q: np.ndarray, l2: bool,
               out: np.ndarray) -> None:
    """Exact keys of ``data[rows]``, larger is nearer: the dot product (cosine)
    or minus the squared distance (L2), summed in float64.

    L2 is summed from the differences, not expanded into norms and a dot
    product, so rows far from the origin keep their precision.
    """
    d = q.shape[0]
    for t in range(rows.shape[0]):
        r = rows[t]
        acc = 0.0
        if l2:
            for j in range(d):
                diff = np.float64(data[r, j]) - np.float64(q[j])
                acc += diff * diff
            out[t] = -acc
        else:
            for j in range(d):
                acc += np.float64(data[r, j]) * np.float64(q[j])
            out[t] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def scan_bounds(codes: np.ndarray, scales: np.ndarray, sqnorm: np.ndarray, n: int,
                q: np.ndarray, l2: bool, k: int, mask: np.ndarray, use_mask: bool,
                upper: np.ndarray) -> float:
    """Fill ``upper[i]`` with an upper bound of row i's key; return the k-th
    largest lower bound (``-inf`` if fewer than k rows are eligible).

    The key is ``x.q`` (cosine, rows unit length) or ``2 x.q - |x|^2`` (L2: larger
    is nearer).  Rows with ``use_mask and not mask[i]`` get ``upper = -inf``.
    """
    d = q.shape[0]
    l1 = 0.0
    for j in range(d):
        l1 += abs(np.float64(q[j]))
    # Per unit of row scale: the quantisation error (half a code step per
    # component, widened by 1e-4 for the float32 division that made the codes
    # and for this product's own rounding) plus twice the worst float32
    # rounding of a d-term sum of products each at most 127 |q_j| in size.
    per_scale = np.float32(l1 * (0.5 * (1.0 + 1e-4) + 2.0 * d * _F32_EPS * _INT8_MAX))
    # Pass 1: approximate products only, a loop the compiler vectorises well.
    for i in range(n):
        s = np.float32(0.0)
        for j in range(d):
            s += np.float32(codes[i, j]) * q[j]
        upper[i] = s * scales[i]
    # Pass 2: bounds, and a min-heap of the k best lower bounds.
    heap = np.full(k, -np.inf, dtype=np.float32)
    for i in range(n):
        if use_mask and not mask[i]:
            upper[i] = -np.inf
            continue
        approx = upper[i]
        bound = scales[i] * per_scale
        # The rest of the slack covers rounding in the float32 arithmetic below.
        if l2:
            bound = 2 * bound + np.float32(1e-6) * (2 * abs(approx) + sqnorm[i])
            approx = 2 * approx - sqnorm[i]
        else:
            bound = bound + np.float32(1e-6) * abs(approx)
        upper[i] = approx + bound
        low = approx - bound
        if low > heap[0]:
            # Replace the smallest and sift it down.
            heap[0] = low
            pos = 0
            while True:
                left = 2 * pos + 1
                if left >= k:
                    break
                child = left
                if left + 1 < k and heap[left + 1] < heap[left]:
                    child = left + 1
                if heap[child] < heap[pos]:
                    heap[pos], heap[child] = heap[child], heap[pos]
                    pos = child
                else:
                    break
    return float(heap[0])


@numba.njit(cache=True, nogil=True)
def collect_at_least(values: np.ndarray, n: int, threshold: float, out: np.ndarray) -> int:
    """Write the indices i < n with ``values[i] >= threshold`` into ``out``; return the count."""
    count = 0
    for i in range(n):
        if values[i] >= threshold:
            out[count] = i
            count += 1
    return count
