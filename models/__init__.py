"""The anomaly model the pipeline scores events with (see models/README.md)."""
