"""Inference and mining: Ray Data streams the candidates to a pool of model actors."""
