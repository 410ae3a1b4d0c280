"""The tools floor: `bench` (the fast engine, the peers and the reference side by side), `gpu_check`
(the one-shot GPU suite), `nnsight_peer` (nnsight as a measured peer) and `grid` (`xtp grid`: the
grid on a few instances into a Parquet file, no Ray), `schedule_bench` (`xtp bench --suite schedule`:
a night's shards on simulated pools, plan by cost against plan by size) and `scale_bench` (`xtp bench
--suite results`: synthetic shards aggregated three ways). `bench`, `gpu_check` and `nnsight_peer`, like
the engine, import no ray, pyarrow or matplotlib: they run from a plain checkout on a bare GPU image."""
