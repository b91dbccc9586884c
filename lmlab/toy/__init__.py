"""Toy models for interpretability experiments (Elhage et al. 2022, Toy Models of Superposition)."""
