"""Length buckets: the one place that rounds a varying size up to one of a few static shapes.

Used by generation (batch, prompt and new-token lengths) and the training data pipeline, so that calls with
different sizes inside one bucket reuse the same compiled program.
"""

from __future__ import annotations

from typing import Sequence

MIN_LENGTH = 16


def bucket(n: int, buckets: Sequence[int] | None = None, minimum: int = MIN_LENGTH) -> int:
    """Smallest bucket >= n: from `buckets` when given, else the next power of two (at least `minimum`)."""
    if n < 0:
        raise ValueError(f"length must be non-negative, got {n}")
    if buckets:
        for b in sorted(buckets):
            if b >= n:
                return b
        raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")
    b = max(1, minimum)
    while b < n:
        b *= 2
    return b


def batch_bucket(n: int) -> int:
    """Rows are padded to a power of two (1, 2, 4, ...)."""
    return bucket(n, minimum=1)
