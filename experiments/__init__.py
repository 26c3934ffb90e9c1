"""Launchers: train, evaluate and plot jmeta experiments from ml-collections configs."""
