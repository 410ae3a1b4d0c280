"""Ray Data over a run's shards: one dataset item per shard to run, mapped by an autoscaling pool of
`actor.GridSearch` actors (one engine each), each call committing its shard (`shards`). Ray Data's actor
pools restart lost actors and retry their tasks; rewriting a shard is idempotent, so nothing is duplicated.
"""
from __future__ import annotations

import json

from ..tasks import Instance
from .actor import GridSearch
from .checks import check_cluster, request_text
from .config import RunConfig
from .ray_noise import without_noise


def run_shards(config: RunConfig, shards: dict[str, list[Instance]], todo: list[str],
               ray_address: str | None = None) -> list[dict]:
    """Run the shards named in `todo` (in that order) on the cluster, after `checks.check_cluster`; each
    shard's summary (`actor.GridSearch`). Connects to Ray (ray_address) unless connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
    check_cluster(config)
    _tune_data_context(config)  # before the dataset: it takes a copy of the current DataContext
    items = [{"shard": s, "instances": json.dumps([i.to_row() for i in shards[s]])} for s in todo]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    results = dataset.map_batches(
        GridSearch, fn_constructor_kwargs={"config": config.to_json()}, batch_size=1,
        # one shard running and one queued per actor: the queue is what lets the pool grow (`_tune_data_context`);
        # the plan's last wave is cut fine, so a shard queued behind another at the end is short
        compute=ray.data.ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors,
                                           max_tasks_in_flight_per_actor=2),
        num_gpus=config.num_gpus_per_actor, num_cpus=config.num_cpus_per_actor)
    with without_noise():
        try:
            return results.take_all()
        except ray.exceptions.GetTimeoutError:
            raise ValueError(f"no actor of the pool started within pool_start_timeout_s = "
                             f"{config.pool_start_timeout_s:g} s: pending actors ask for {request_text(config)}; "
                             "`ray status` shows what the cluster offers and what the autoscaler is doing") from None


def _tune_data_context(config: RunConfig) -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = config.pool_start_timeout_s
    # Ray Data grows a pool while its actors' tasks in flight reach this share of their slots. Its
    # default (1.75) is out of reach with two in flight per actor, and with one it would never
    # grow past min_actors; at 1.0 the pool doubles while every actor has a shard queued.
    context.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0
