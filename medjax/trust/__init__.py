"""Trustworthy predictions: uncertainty, calibration and subgroup analysis (pure functions over predictions)."""
