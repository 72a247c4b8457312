"""Ray Tune over the config tree (Ray Train V2 style): `experiment.run_tune` drives a search
whose trials each build and fit a `TorchTrainer` (`trial`); the search space is YAML dotted keys
with expressions (`space`); `layout` is where an experiment's files live, `checks` what is
refused before Ray starts, `report` the trials table and best.yaml.

Nothing is imported here: `layout` stays light (no Ray), so `lavender tune` reads and checks
its config before Ray Tune is imported."""
