"""The job floor: the Ray Data grid search over a run's instances, as `ray job submit` runs it.

`config` (the run's settings, every field a flag), `planning` (pre-flight checks and shards),
`actor` (the Ray Data callable holding one engine), `shards` (committing a shard's candidates
exactly once), `pipeline` (the job and its manifest), `lease` (one driver per run), `placement`
(GPUs per actor), `quiet` (Ray's per-actor noise off stderr), `entry` (`xtp run` / `xtp aggregate`
and jobs/*.py). Imports the engine only inside the actors."""
