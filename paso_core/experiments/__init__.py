"""Experiment drivers behind the notebooks: presets, run plans, tables and figures per study."""
