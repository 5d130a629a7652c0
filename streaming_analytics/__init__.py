"""Shared core of the streaming-analytics platform: configuration, the event and stream contracts,
the event generator and the local stack manager."""
