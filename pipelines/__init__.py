"""Beam pipelines: the graphs that wire the transforms of ``transforms/`` together."""
