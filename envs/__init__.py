"""Environments: where scenarios come from (datasets, bundled samples, generators) and the services they use."""
