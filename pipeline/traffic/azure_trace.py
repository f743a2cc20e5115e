"""The Azure LLM inference trace 2023 (CC BY 4.0), shipped in ``pipeline/data/``.

Two CSV files, one hour of requests each (code completion and conversation) with their
arrival time and token counts; see ``pipeline/data/azure_llm_trace/ATTRIBUTION.md``. This
module parses them by hand (7 fractional digits in ``TIMESTAMP``, more than ``%f``
takes; CRLF line endings; no newline after the last row) into :class:`TraceRow` tuples
whose times are nanosecond offsets from the first request of their file.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import NamedTuple

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "azure_llm_trace"
FILES = {"code": "AzureLLMInferenceTrace_code.csv", "conv": "AzureLLMInferenceTrace_conv.csv"}
HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    """A trace file is missing or malformed; the message names file and line."""


class TraceRow(NamedTuple):
    offset_ns: int        # since the first request of its file
    kind: str             # "code" or "conv"
    input_tokens: int     # ContextTokens
    output_tokens: int    # GeneratedTokens


def parse_timestamp(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fffffffff]`` (UTC) -> Unix nanoseconds, digits exact."""
    date, _, frac = text.strip().partition(".")
    try:
        whole = dt.datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise TraceError(f"bad TIMESTAMP {text!r}") from None
    if frac and (not frac.isdigit() or len(frac) > 9):
        raise TraceError(f"bad fraction in TIMESTAMP {text!r}")
    return int(whole.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def parse_csv(text: str, kind: str, where: str = "<trace>") -> list[tuple[int, str, int, int]]:
    """Rows of one file as (unix_ns, kind, input, output), in file order."""
    lines = text.splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split(",")) != HEADER:
        raise TraceError(f"{where}: expected header {','.join(HEADER)}")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 3:
            raise TraceError(f"{where}:{n}: expected 3 columns, got {len(parts)}")
        try:
            inp, outp = int(parts[1]), int(parts[2])
        except ValueError:
            raise TraceError(f"{where}:{n}: token counts must be integers") from None
        if inp < 0 or outp < 0:
            raise TraceError(f"{where}:{n}: negative token count")
        try:
            ts = parse_timestamp(parts[0])
        except TraceError as exc:
            raise TraceError(f"{where}:{n}: {exc}") from None
        out.append((ts, kind, inp, outp))
    return out


@functools.lru_cache(maxsize=8)
def load(kinds: tuple[str, ...] = ("code", "conv"), data_dir: Path = DATA_DIR
         ) -> tuple[TraceRow, ...]:
    """The rows of the chosen files merged by arrival time.

    Each file's offsets count from its own first request (the code file starts 77 s
    after the conversation file), so every service has traffic from the first second.
    """
    rows: list[tuple[int, str, int, int]] = []
    for kind in kinds:
        if kind not in FILES:
            raise TraceError(f"unknown trace {kind!r}: choose from {', '.join(FILES)}")
        path = data_dir / FILES[kind]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TraceError(f"{path}: {exc}") from None
        part = parse_csv(text, kind, str(path))
        if part:
            t0 = min(r[0] for r in part)
            rows += [(ts - t0, k, inp, outp) for ts, k, inp, outp in part]
    if not rows:
        raise TraceError("the trace has no rows")
    rows.sort(key=lambda r: (r[0], r[1]))
    return tuple(TraceRow(off, kind, inp, outp) for off, kind, inp, outp in rows)


def span_ns(rows: tuple[TraceRow, ...]) -> int:
    """Length of the trace: last arrival plus the mean gap (so a replay can wrap around)."""
    if len(rows) < 2:
        return 1_000_000_000
    last = rows[-1].offset_ns
    return last + last // (len(rows) - 1)
