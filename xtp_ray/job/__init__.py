"""The job floor: the Ray Data grid search over a run's instances, as `ray job submit` runs it. One module each:

- `config`: the run's settings (YAML, every field a flag), validated before any work.
- `checks`: before any work: the model's config (no weights), the output, and on the cluster the actor
  request's feasibility and memory fit (one check for the run and the dry run).
- `plan`: the run's instances loaded (rows left out recorded), cut into shards, the plan resumed and its digest.
- `schedule`: shards cut by predicted cost, dispatched costliest first; the makespan.
- `cost`: an instance's predicted GPU-seconds, from its prompts and the model's shape.
- `lengths`: prompts beyond the run's token limit, counted before launch.
- `memory_fit`: does one actor's model fit its GPUs (from the config alone).
- `placement`: the request against the live nodes and node types, shared paths, an actor's devices.
- `lease`: one driver per run (a lease object refreshed while the driver lives).
- `manifest`: the run's manifest: config, plan, model revision, every attempt and its timings.
- `run`: a run from start to end (`run_job`): checks, lease, plan, manifest, pipeline, what was left out.
- `pipeline`: Ray Data over the shards to run, on a pool of `actor.GridSearch` actors.
- `actor`: the Ray Data callable: one engine per actor, one shard per call, committed as Parquet.
- `shards`: where committed shards live, one written whole or not at all, which a resume keeps.
- `ray_noise`: Ray Data's per-actor constructor-argument line kept off stderr.
- `dryrun`: `xtp run --dry-run`: the plan, its figures and predictions, no Ray work.
- `nightly`: `xtp nightly`: one night of grid searches and their trends, never two nights at once.
- `alert`: a failed or regressed night posted to a webhook.
- `entry`: `xtp run` / `xtp aggregate` and jobs/*.py: one line and exit 2 per user mistake.

The driver imports from the engine only lazily, to check a config (the engine and architecture registries;
torch for a `tiny:` model or vLLM's model check); models run in the actors."""
