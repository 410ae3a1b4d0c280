"""Ray job entry point of a night (the RayJob / RayCronJob in jobs/k8s, or `ray job submit`):

    python jobs/nightly.py --config jobs/paper.yaml --models meta-llama/Llama-2-7b-chat-hf,... \\
        --output s3://my-bucket/xtp-runs

One grid search per model, then each model's history (exit 3 on a regression). A night that
starts while another still runs exits at once, naming it, and starts no work. A night that failed,
was refused or regressed posts to the webhook in $XTP_ALERT_WEBHOOK where it is set (xtp_ray/job/alert.py).
"""
import sys

from xtp_ray.job.nightly import nightly_main

if __name__ == "__main__":
    sys.exit(nightly_main(sys.argv[1:]))
