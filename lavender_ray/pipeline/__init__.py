"""Every Ray Data step of the project and the datasets built from them.

    read          configured sources -> records (Ray Data readers, rejects written)
    preflight     the sources' paths and first rows, checked before Ray starts (no Ray)
    vlm_check     records the VLM cannot train on (template, max_length, image) -> rejects
    sd_stage      records -> records + SD targets (the SD actor pool)
    cache         the Parquet target cache: layout, keys, shards (what its tasks run)
    extract       filling it (`lavender extract`) and reading it (pipeline.mode=cache)
    precomputed   targets joined from Parquet or the authors' layout
    dataset       `build_train_dataset(cfg, rejects_dir)`: the trainer's dataset by pipeline.mode
    benchmarks    benchmark files -> benchmark rows (evaluation)
    inspect       `lavender data inspect`
    render        `lavender show-targets`

The pure row work these steps run (formats, mixture sampling, SD extraction) lives in
`lavender_ray.data` and `lavender_ray.sd`, which import no Ray.
"""
