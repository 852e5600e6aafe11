"""Thin I/O around the pure core: the Kubernetes client, the action executor, Events."""
