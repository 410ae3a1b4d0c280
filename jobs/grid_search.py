"""Ray job entry point: `ray job submit --working-dir . -- python jobs/grid_search.py --config run.yaml`.

Runs the grid search over every shard not yet committed, then aggregates
(--no-aggregate to skip). Every config field is also a flag.
"""
import sys

from xtp_ray.job.entry import run_main

if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
