"""Where actors run, checked on the live cluster before any work, and the device an actor uses.

- `check_feasible`: one actor's request (CPU, GPU) against the live nodes and the autoscaler's node
  types where they can be read (`get_cluster_config` under autoscaler v2; under the cluster
  launcher's v1 autoscaler, the autoscaling config of the head's monitor process, read on the head);
  what none can hold is refused at once instead of pending forever.
- `check_shared`: a local output or model directory must be the same place on every node that may
  run an actor: the driver writes a probe file into the output (and reads the model's config.json),
  one task pinned to each such node reads the same back.
  Nodes that do not see it are named, and `s3://` (or a shared filesystem) is suggested.
- `gpu_memory_gb`: the memory of one GPU where an actor may run, from the nodes' accelerator type.
- `device_for_actor`: an actor that holds GPUs must see CUDA (Ray sets CUDA_VISIBLE_DEVICES to
  exactly its GPUs) or fail loudly; one that holds none runs on the CPU and is kept off every GPU.
"""
from __future__ import annotations

import logging
import os
import uuid

log = logging.getLogger("xtp_ray")


def actor_request(num_cpus: float, num_gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}


def _fits(resources: dict, request: dict) -> bool:
    return all(resources.get(k, 0) >= v for k, v in request.items())


def _show(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory")
                           and not (k == "memory" and not v)) + "}"


def autoscaler_node_types() -> dict[str, dict] | None:
    """Node type -> resources of one node: from the cluster config Ray holds (autoscaler v2), else from
    the autoscaling config the cluster launcher gave this head's monitor (v1); None where neither is
    readable here."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the key: no node types known
        config = None
    if config and config.node_group_configs:
        return {group.name or f"type{k}": dict(group.resources)
                for k, group in enumerate(config.node_group_configs) if group.max_count != 0}
    return launcher_node_types()


def launcher_node_types() -> dict[str, dict] | None:
    """Node type -> resources from the autoscaling config of this cluster's v1 monitor, where this
    process runs on the head (as a `ray job submit` entrypoint does): `ray up` starts the head with
    `ray start --autoscaling-config=~/ray_bootstrap_config.yaml`, which Ray passes to the monitor
    process and keeps nowhere a driver can ask. The monitor is found by its command line, and must
    name this cluster's GCS address; node types with max_workers 0 are left out."""
    import ray
    import yaml

    path = monitor_autoscaling_config(ray.get_runtime_context().gcs_address)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)  # JSON is YAML too
        types = config["available_node_types"]
        head = config.get("head_node_type")
        return {name: dict(spec.get("resources") or {}) for name, spec in types.items()
                if name != head and spec.get("max_workers", config.get("max_workers", 1)) != 0}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        log.warning("cannot read the autoscaler's node types from %s: %s", path, exc)
        return None


def monitor_autoscaling_config(gcs_address: str, proc: str = "/proc") -> str | None:
    """The --autoscaling-config path of the Ray monitor process of the cluster at `gcs_address`
    visible on this host, or None."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as handle:
                args = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args) or f"--gcs-address={gcs_address}" not in args:
            continue
        for k, arg in enumerate(args):
            if arg.startswith("--autoscaling-config="):
                return os.path.expanduser(arg.split("=", 1)[1])
            if arg == "--autoscaling-config" and k + 1 < len(args):
                return os.path.expanduser(args[k + 1])
    return None


def autoscaler_present() -> bool:
    """Whether an autoscaler with node types runs (its status carries an `autoscaler_report`; a plain
    `ray start` or `ray.init` head reports load metrics only)."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get

    try:
        status = _internal_kv_get("__autoscaling_status")
        return bool(status) and bool(json.loads(status).get("autoscaler_report"))
    except Exception:  # noqa: BLE001 - no status readable: no autoscaler known
        return False


def check_feasible(num_cpus: float, num_gpus: float) -> str:
    """Refuse (ValueError) an actor request no live node and no autoscaler node type can hold; returns
    how it can be held, for the log."""
    import ray

    request = actor_request(num_cpus, num_gpus)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if any(_fits(n["Resources"], request) for n in alive):
        return "a live node fits"
    types = autoscaler_node_types()
    if types is not None:
        fitting = [name for name, resources in types.items() if _fits(resources, request)]
        if fitting:
            return f"the autoscaler can add {', '.join(fitting)}"
        offered = "; ".join(f"{name} {_show(r)}" for name, r in types.items())
        raise ValueError(f"no node can hold one actor {_show(request)}: live nodes offer "
                         f"{', '.join(_show(n['Resources']) for n in alive)}, the autoscaler's node types {offered}; "
                         "lower num_gpus_per_actor / num_cpus_per_actor or add a node type that fits")
    if autoscaler_present():
        return "no live node fits; an autoscaler may add one (bounded by pool_start_timeout_s)"
    raise ValueError(f"no node can hold one actor {_show(request)}: the live nodes offer "
                     f"{', '.join(_show(n['Resources']) for n in alive)} and no autoscaler is running; lower "
                     "num_gpus_per_actor / num_cpus_per_actor or start a node that fits")


def gpu_memory_gb(num_cpus: float, num_gpus: float, known: dict[str, float]) -> tuple[float | None, str]:
    """(GB of one GPU, where from) over the live nodes and the autoscaler's node types that can hold one
    actor (`smallest_gpu`); (None, why) where none of them names a known accelerator type."""
    import ray

    places = {f"node {n['NodeManagerAddress']}": n["Resources"] for n in ray.nodes() if n.get("Alive")}
    places.update({f"node type {name}": r for name, r in (autoscaler_node_types() or {}).items()})
    return smallest_gpu(places, actor_request(num_cpus, num_gpus), known)


def smallest_gpu(places: dict[str, dict], request: dict, known: dict[str, float]) -> tuple[float | None, str]:
    """The smallest GPU memory among the places that can hold `request`, from their
    `accelerator_type:<T>` resource and `known` (type -> GB), so that a fit holds wherever Ray puts the
    actor; places naming no known type are passed over."""
    sizes = {}
    for place, resources in places.items():
        if not _fits(resources, request):
            continue
        types = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
        if types and types[0] in known:
            sizes[place] = (known[types[0]], types[0])
    if not sizes:
        return None, "no node that can hold an actor names a known accelerator_type"
    place, (gb, kind) = min(sizes.items(), key=lambda item: item[1][0])
    return gb, f"{place}: {kind}"


def _read_probe(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def check_shared(outputs: dict[str, str], inputs: dict[str, str], num_cpus: float, num_gpus: float,
                 timeout_s: float = 120.0) -> None:
    """Each local path must be the same place on every live node that can hold an actor, else ValueError
    naming the nodes. outputs: name -> a directory actors write (a probe file is written there and read
    back); inputs: name -> a file actors read (its text must read the same; nothing is written next to
    it: a model directory may well be read-only)."""
    import ray

    request = actor_request(num_cpus, num_gpus)
    nodes = [n for n in ray.nodes() if n.get("Alive") and _fits(n["Resources"], request)]
    here = ray.get_runtime_context().get_node_id()
    remote = [n for n in nodes if n["NodeID"] != here]
    if not remote:
        return
    for name, directory in outputs.items():
        token = uuid.uuid4().hex
        probe = os.path.join(directory, f".xtp-probe-{token}")
        try:
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write(token)
            _refuse_blind(name, directory, probe, token, remote, timeout_s)
        finally:
            try:
                os.unlink(probe)
            except OSError:
                pass
    for name, path in inputs.items():
        _refuse_blind(name, os.path.dirname(path), path, _read_probe(path), remote, timeout_s)


def _refuse_blind(name: str, where: str, path: str, expected: str | None, nodes: list[dict], timeout_s: float) -> None:
    """ValueError naming the nodes where `path` does not read `expected` (one pinned task per node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reader = ray.remote(num_cpus=0)(_read_probe)
    refs = {n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": reader.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(path) for n in nodes}
    seen = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    blind = sorted(node for node, text in seen.items() if text != expected)
    if blind:
        raise ValueError(f"{name} {where} is local to this host: node(s) {', '.join(blind)} do not see it, "
                         f"so their actors would write (or read) elsewhere; use s3://bucket/prefix or a "
                         "filesystem shared by every node")


def device_for_actor(num_gpus: float) -> str:
    """'cuda' for an actor holding GPUs (CUDA must work there), 'cpu' otherwise (and no GPU is visible)."""
    if num_gpus <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Ray leaves it unset for a 0-GPU actor: it would see them all
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        import socket

        raise RuntimeError(f"this actor holds {num_gpus:g} GPU(s) (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}) but CUDA is not usable on "
                           f"{socket.gethostname()}: torch {torch.__version__} sees no GPU")
    return "cuda"
