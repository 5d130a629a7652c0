"""Mergeable approximate sketches for the window aggregates: quantiles and distinct counts.

Both are *mergeable*: the sketch of a union equals the merge of the sketches of its parts, exactly
(bucket counts add, registers take the max). That is what lets Beam combine partial aggregates in any
grouping — per bundle, per worker, after a retry — and still produce the same numbers.

Plain Python with no Beam import, so they are tested on their own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Final


class QuantileSketch:
    """Quantiles with a bounded *relative* error: a fixed logarithmic-bucket histogram (DDSketch).

    A value ``x > 0`` goes to bucket ``i = ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``,
    i.e. bucket ``i`` holds ``(gamma**(i-1), gamma**i]``; it is represented by
    ``2 * gamma**i / (gamma + 1)``, which is within a relative distance ``a`` of everything in the
    bucket. Values below ``min_value`` (zero amounts) share one exact zero bucket.

    Error bound: for ``q`` in [0, 1] and ``n`` values, ``quantile(q)`` returns ``v`` with
    ``|v - x| <= a * x`` where ``x`` is the exact order statistic of rank ``floor(q * (n - 1))``
    (0-based) — for values below ``min_value`` the error is at most ``min_value`` in absolute terms.
    The default ``a = 0.01`` (1 %) needs ~920 buckets to span 1e-2 .. 1e6; only non-empty buckets are
    stored. Merging adds bucket counts, so the bound holds for merged sketches too.
    """

    __slots__ = ("bins", "count", "zero_count")

    RELATIVE_ACCURACY: Final = 0.01
    MIN_VALUE: Final = 1e-6
    _GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
    _LOG_GAMMA: Final = math.log(_GAMMA)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0

    def add(self, value: float) -> None:
        """Add one non-negative value."""
        self.count += 1
        if value < self.MIN_VALUE:
            self.zero_count += 1
            return
        index = math.ceil(math.log(value) / self._LOG_GAMMA)
        self.bins[index] = self.bins.get(index, 0) + 1

    @classmethod
    def bucket_of(cls, value: float) -> int | None:
        """The bucket :meth:`add` puts ``value`` in; None for the zero bucket."""
        if value < cls.MIN_VALUE:
            return None
        return math.ceil(math.log(value) / cls._LOG_GAMMA)

    def add_bucket(self, index: int | None) -> None:
        """Add one value by its :meth:`bucket_of` (the same as ``add(value)``)."""
        self.count += 1
        if index is None:
            self.zero_count += 1
            return
        self.bins[index] = self.bins.get(index, 0) + 1

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s values to this sketch (exact: bucket counts add)."""
        self.count += other.count
        self.zero_count += other.zero_count
        bins = self.bins
        for index, n in other.bins.items():
            bins[index] = bins.get(index, 0) + n

    def quantile(self, q: float) -> float | None:
        """The approximate ``q``-quantile (see the class docstring for the bound); None if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        if rank < self.zero_count:
            return 0.0
        seen = self.zero_count
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen > rank:
                return 2.0 * self._GAMMA**index / (self._GAMMA + 1.0)
        raise AssertionError("bucket counts do not add up to count")  # pragma: no cover


class HyperLogLog:
    """Approximate distinct count: HyperLogLog with 2**12 registers, exact while small.

    * Up to ``SPARSE_LIMIT`` (256) distinct items the sketch keeps the 64-bit hashes themselves, so
      small windows get an exact count (barring 64-bit hash collisions).
    * Beyond that it is a dense HyperLogLog with ``m = 4096`` one-byte registers (4 KiB), estimated
      with Ertl's improved raw estimator (arXiv:1702.01284, algorithm 6), which is unbiased over the
      whole range without empirical bias tables. Relative standard error ``1.04 / sqrt(m)`` ≈ 1.6 %;
      the tests check |error| < 3 standard errors (4.9 %) at several cardinalities up to 100k.

    Items are hashed with BLAKE2b-64, which is stable across processes and machines (Python's
    ``hash()`` is salted per process, so merged partials from different workers would not agree).
    """

    __slots__ = ("registers", "sparse")

    PRECISION: Final = 12
    M: Final = 1 << PRECISION
    SPARSE_LIMIT: Final = 256
    STANDARD_ERROR: Final = 1.04 / math.sqrt(M)
    _Q: Final = 64 - PRECISION

    def __init__(self) -> None:
        self.sparse: set[int] | None = set()
        self.registers: bytearray | None = None

    @staticmethod
    def hash_item(item: str) -> int:
        """The stable 64-bit hash of an item."""
        return int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "big")

    def add(self, item: str) -> None:
        """Add one item (e.g. a user id)."""
        self.add_hash(self.hash_item(item))

    def add_hash(self, h: int) -> None:
        """Add an item by its :meth:`hash_item` value."""
        if self.sparse is not None:
            self.sparse.add(h)
            if len(self.sparse) > self.SPARSE_LIMIT:
                self._densify()
            return
        self._add_dense(h)

    def _add_dense(self, h: int) -> None:
        registers = self.registers
        assert registers is not None
        index = h >> self._Q
        rest = h & ((1 << self._Q) - 1)
        rho = self._Q - rest.bit_length() + 1
        registers[index] = max(registers[index], rho)

    def _densify(self) -> None:
        assert self.sparse is not None
        hashes = self.sparse
        self.sparse = None
        self.registers = bytearray(self.M)
        for h in hashes:
            self._add_dense(h)

    def merge(self, other: HyperLogLog) -> None:
        """Add ``other``'s items to this sketch (exact: the result equals the sketch of the union)."""
        if other.sparse is not None:
            for h in other.sparse:
                self.add_hash(h)
            return
        assert other.registers is not None
        if self.sparse is not None:
            self._densify()
        assert self.registers is not None
        self.registers = bytearray(map(max, self.registers, other.registers))

    def estimate(self) -> int:
        """The approximate number of distinct items added (exact in sparse mode)."""
        if self.sparse is not None:
            return len(self.sparse)
        assert self.registers is not None
        m, q = self.M, self._Q
        histogram = [0] * (q + 2)
        for value in self.registers:
            histogram[value] += 1
        z = m * _tau(1.0 - histogram[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + histogram[k])
        z += m * _sigma(histogram[0] / m)
        return round(m * m / (2.0 * math.log(2.0)) / z)

    @classmethod
    def of(cls, items: Iterable[str]) -> HyperLogLog:
        """A sketch of ``items``."""
        sketch = cls()
        for item in items:
            sketch.add(item)
        return sketch


def _sigma(x: float) -> float:
    """Ertl's sigma(x) = x + sum_k x**(2**k) * 2**(k-1), for the share of empty registers."""
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    """Ertl's tau(x), the correction for saturated registers."""
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0
