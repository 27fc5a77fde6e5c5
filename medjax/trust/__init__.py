"""Trustworthy predictions: calibration (`calibration`) and subgroup analysis (`subgroups`), pure functions over
a model's predictions. `medjax evaluate --calibrate / --subgroups` (`medjax.train.trust_eval`) runs them on a
split; docs/trust.md says what each number is."""
