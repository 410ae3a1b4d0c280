"""cluster.yaml is valid against the schema the pinned Ray ships, offline."""
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types["gpu_7b"]["resources"]["GPU"] == 1 and types["gpu_70b"]["resources"]["GPU"] == 8
    assert ray.__version__ in config["docker"]["image"]  # the image matches the pinned Ray


def test_an_invalid_cluster_yaml_is_rejected():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_7b"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_the_70b_config_fits_the_70b_node_type_and_validates():
    from xtp_ray.engine.vllm import check_model
    from xtp_ray.job.config import load_config

    config = load_config(path=str(ROOT / "jobs" / "llama70b.yaml"))
    node = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]["gpu_70b"]["resources"]
    assert config.engine == "vllm" and config.num_gpus_per_actor == node["GPU"]
    assert config.num_cpus_per_actor <= node["CPU"]
    # Llama-2-70B's published attention shape: tensor parallel 8 divides it
    check_model({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 64, "num_key_value_heads": 8},
                int(config.num_gpus_per_actor))


def test_heavy_installs_only_where_gpus_are_and_the_dashboard_stays_private():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    assert not config["setup_commands"]
    assert not any("vllm" in c for c in config["head_setup_commands"])
    for name, node in types.items():
        installs = " ".join(node.get("worker_setup_commands", []))
        assert ("vllm" in installs) == (node["resources"].get("GPU", 0) > 0), name
    assert types["cpu_small"]["resources"] == {"CPU": 4}  # CPU-only runs hold no GPU node
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert all("RAY_AUTH_MODE=token" in c
               for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if c.startswith(("ray start", "RAY_AUTH_MODE")))
