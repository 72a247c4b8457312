"""Data without Ray: the formats users bring (`formats`), the paper data sets' raw rows
(`readers`), mixture sampling (`mixture`), benchmark rows (`benchmarks`), the synthetic data set
(`synthetic`) and the checks of the configured paths before anything starts (`checks`).
`lavender_ray.pipeline` reads files with Ray Data and runs these on each row."""
