"""Call ids of a whole batch: :func:`pipeline.normalise.call_id` in one numba kernel.

Why: a call's id is BLAKE2b-128 over (tenant length, tenant, trace id, span id), and
hashlib costs about 3 us per call once its object, copy and hexdigest are counted: a
tenth of the columnar normaliser's time. The kernel below is BLAKE2b (RFC 7693, unkeyed,
16-byte digest) over the same bytes, writing lowercase hex straight into the buffer of
an Arrow string column. Tests compare it with hashlib on random tenants and ids,
including tenants long enough to need several 128-byte blocks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from pipeline.arrow_buffers import HEX_DIGITS, binary_buffers

_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B,
                0xA54FF53A5F1D36F1, 0x510E527FADE682D1, 0x9B05688C2B3E6C1F,
                0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0]], np.int64)
_DIGEST = 16                       # bytes: ``hashlib.blake2b(..., digest_size=16)``
_IDS = 24                          # trace id (16 bytes) then span id (8 bytes)


@njit(cache=True, inline="always")
def _rotr(x: np.uint64, n: int) -> np.uint64:
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@njit(cache=True, inline="always")
def _g(v: np.ndarray, a: int, b: int, c: int, d: int, x: np.uint64, y: np.uint64) -> None:
    """The RFC's mixing function G over v[a], v[b], v[c], v[d]."""
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


@njit(cache=True)
def _compress(h: np.ndarray, block: np.ndarray, t: int, last: bool,
              v: np.ndarray, m: np.ndarray) -> None:
    """BLAKE2b's F over one 128-byte block (``t``: bytes hashed so far, this block's
    included); ``v`` and ``m`` are scratch."""
    for i in range(16):
        w = np.uint64(0)
        for j in range(8):
            w |= np.uint64(block[8 * i + j]) << np.uint64(8 * j)
        m[i] = w
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = _IV[i]
    v[12] ^= np.uint64(t)
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = _SIGMA[r % 10]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


@njit(cache=True)
def _kernel(tenant_data: np.ndarray, tenant_offsets: np.ndarray, ids: np.ndarray,
            out: np.ndarray) -> None:
    """Hex digest of row i into ``out[32 i: 32 i + 32]``."""
    n = len(tenant_offsets) - 1
    h = np.empty(8, np.uint64)
    v = np.empty(16, np.uint64)
    m = np.empty(16, np.uint64)
    block = np.empty(128, np.uint8)
    msg = np.empty(128, np.uint8)
    for i in range(n):
        lo, hi = tenant_offsets[i], tenant_offsets[i + 1]
        size = 4 + (hi - lo) + _IDS
        if len(msg) < size:
            msg = np.empty(size + 128, np.uint8)
        t_len = hi - lo
        msg[0] = (t_len >> 24) & 255
        msg[1] = (t_len >> 16) & 255
        msg[2] = (t_len >> 8) & 255
        msg[3] = t_len & 255
        msg[4:4 + t_len] = tenant_data[lo:hi]
        msg[4 + t_len:size] = ids[i]
        for j in range(8):
            h[j] = _IV[j]
        h[0] ^= np.uint64(0x01010000 | _DIGEST)
        done = 0
        while size - done > 128:           # every block but the last
            block[:] = msg[done:done + 128]
            done += 128
            _compress(h, block, done, False, v, m)
        block[:] = 0
        block[:size - done] = msg[done:size]
        _compress(h, block, size, True, v, m)
        base = 32 * i
        for j in range(_DIGEST):
            byte = (h[j // 8] >> np.uint64(8 * (j % 8))) & np.uint64(255)
            out[base + 2 * j] = HEX_DIGITS[byte >> np.uint64(4)]
            out[base + 2 * j + 1] = HEX_DIGITS[byte & np.uint64(15)]


def call_ids(tenant: pa.Array, trace: np.ndarray, span: np.ndarray) -> pa.Array:
    """The call id of every row (``trace``: (n, 16) bytes, ``span``: (n, 8) bytes), as a
    string column equal to ``[normalise.call_id(t, tr, sp) ...]``."""
    n = len(tenant)
    if tenant.null_count:
        raise ValueError("call ids need a tenant on every row")
    data, offsets = binary_buffers(tenant)
    ids = np.ascontiguousarray(np.concatenate([trace, span], axis=1), np.uint8)
    out = np.empty(32 * n, np.uint8)
    if n:
        _kernel(data, offsets, ids, out)
    offs = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offs), pa.py_buffer(out)])


def warm_up() -> None:
    """Compile (or load from numba's cache) before the first batch."""
    call_ids(pa.array(["t"]), np.zeros((1, 16), np.uint8), np.zeros((1, 8), np.uint8))
