"""Ray Tune over the config tree (Ray Train V2 style): `run_tune` drives a search whose trials
each build and fit a `TorchTrainer`; the search space is YAML dotted keys with expressions."""

from lavender_ray.tune.experiment import TuneSummary, describe, run_tune
from lavender_ray.tune.layout import TuneLayout, layout_of
from lavender_ray.tune.space import Dimension, SearchSpace, parse_search_space

__all__ = [
    "Dimension",
    "SearchSpace",
    "TuneLayout",
    "TuneSummary",
    "describe",
    "layout_of",
    "parse_search_space",
    "run_tune",
]
