"""Ray job entry point: `ray job submit --working-dir . -- python jobs/aggregate.py --output s3://... --run-id ID`."""
import sys

from xtp_ray.job.entry import aggregate_main

if __name__ == "__main__":
    sys.exit(aggregate_main(sys.argv[1:]))
