"""Arrow arrays as numpy views of their buffers, and back: the zero-copy plumbing the
columnar normaliser and the ``llm_calls`` writer share (one value per numpy element,
no Python object per value)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas import calls as C

HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8).copy()
"""Lowercase hex digits by nibble, for the kernels that write ids and hashes as text."""


def binary_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int64 offsets starting at 0) of a string or binary array, slices honoured."""
    offs = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
    offs = offs.astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None \
        else np.zeros(0, np.uint8)
    return data[offs[0]:offs[-1]], offs - offs[0]


def validity(arr: pa.Array) -> np.ndarray:
    """The validity of every value, from the bitmap (no compute call)."""
    if arr.null_count == 0:
        return np.ones(len(arr), np.bool_)
    bits = np.unpackbits(np.frombuffer(arr.buffers()[0], np.uint8), bitorder="little")
    return bits[arr.offset:arr.offset + len(arr)].astype(np.bool_)


def money_from_pico(pico: np.ndarray, valid: np.ndarray) -> pa.Array:
    """int64 pico-dollars -> ``schemas.calls.MONEY`` (decimal128, scale 12), as is."""
    words = np.empty((len(pico), 2), np.int64)
    words[:, 0] = pico
    words[:, 1] = pico >> 63
    mask = pa.array(valid, pa.bool_()).buffers()[1] if not valid.all() else None
    return pa.Array.from_buffers(C.MONEY, len(pico), [mask, pa.py_buffer(words)])


def money_to_pico(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 pico-dollars, fits) of a MONEY array: the low 64-bit word of each value,
    and whether that word is the whole value (beyond about 9.2 million USD it is not)."""
    words = np.frombuffer(arr.buffers()[1], np.int64)[2 * arr.offset:2 * (arr.offset + len(arr))]
    low, high = words[0::2], words[1::2]
    return low.copy(), (high == (low >> 63)) & (low != np.iinfo(np.int64).min)
