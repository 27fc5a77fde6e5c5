"""Trustworthy predictions: calibration (`calibration`), subgroup analysis (`subgroups`) and uncertainty
(`uncertainty`), pure functions over a model's predictions. `medjax evaluate --calibrate / --subgroups /
--uncertainty` (`medjax.train.trust_eval`, `medjax.train.uncertainty_eval`) runs them on a split; docs/trust.md and
docs/uncertainty.md say what each number is."""
