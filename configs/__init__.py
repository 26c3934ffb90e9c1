"""Experiment configurations: `get_config(arg)` per algorithm × dataset."""
