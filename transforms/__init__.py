"""Beam transforms of the streaming-analytics pipeline; one small named PTransform per step."""
