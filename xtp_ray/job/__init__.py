"""The job floor: the Ray Data grid search over a run's instances, as `ray job submit` runs it.

`config` (the run's settings, every field a flag), `planning` (pre-flight checks and shards),
`actor` (the Ray Data callable holding one engine), `shards` (committing a shard's candidates
exactly once), `pipeline` (the job and its manifest), `lease` (one driver per run), `placement`
(GPUs per actor), `quiet` (Ray's per-actor noise off stderr), `entry` (`xtp run` / `xtp aggregate`
and jobs/*.py). The driver imports from the engine only lazily, to check a config (the engine and
architecture registries; torch for a `tiny:` model or vLLM's model check); models run in the actors."""
