"""Data without Ray: the formats users bring (`formats`), the paper data sets' raw rows
(`readers`), mixture sampling (`mixture`), benchmark rows (`benchmarks`) and the synthetic data set
(`synthetic`). `lavender_ray.pipeline` reads files with Ray Data and runs these on each row."""
