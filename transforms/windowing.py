"""The windows of an element in the global window, for the steps that build their outputs'
windowed values themselves.

Parse, dedup, the shard batching and the pre-aggregation emit ``WindowedValue``\\ s directly (one
object per element instead of Beam wrapping each output again); all of them emit into the global
window, and share this one tuple instead of allocating one per element.
"""

from __future__ import annotations

from typing import Final

from apache_beam.transforms.window import GlobalWindow

#: ``windows`` of a ``WindowedValue`` in the global window (``GlobalWindow()`` is a singleton).
GLOBAL_WINDOWS: Final = (GlobalWindow(),)
