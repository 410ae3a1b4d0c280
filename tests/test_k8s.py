"""jobs/k8s: the RayJob and RayCronJob validate against KubeRay 1.7.0's CRD schemas (tests/data/kuberay-1.7.0)
with unknown fields refused (as `kubectl apply --validate=strict`), and hold the properties the nightly
needs, checked like cluster.yaml's. Not run on a real Kubernetes cluster (none here)."""
import copy
import gzip
import re
import shlex
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).parent / "data" / "kuberay-1.7.0"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _strict(schema):
    """A CRD's structural schema as JSON Schema with unknown fields refused: every object that lists its
    properties, and neither preserves unknown fields nor says what its extra properties are, allows no
    others (Kubernetes' strict field validation); `nullable` admits null."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and \
            not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


def _validator(kind: str):
    crd = yaml.load(gzip.open(CRDS / f"ray.io_{kind.lower()}s.yaml.gz"), Loader=LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "jobs" / "k8s" / name).read_text())


@pytest.fixture(scope="module")
def validators():
    return {kind: _validator(kind) for kind in ("RayJob", "RayCronJob")}


@pytest.mark.parametrize("name, kind", [("rayjob.yaml", "RayJob"), ("raycronjob.yaml", "RayCronJob")])
def test_the_manifests_validate_strictly_against_kuberay_1_7_0(validators, name, kind):
    manifest = _manifest(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[kind].iter_errors(manifest)]
    assert not errors, errors


def test_an_unknown_field_or_a_wrong_value_is_an_error(validators):
    job = _manifest("rayjob.yaml")
    for path, value in ((("spec", "rayClusterSpec", "headGroupSpec", "dashboardHost"), "0.0.0.0"),
                        (("spec", "shutdownAfterJobFinished"), True),  # a typo of shutdownAfterJobFinishes
                        (("spec", "rayClusterSpec", "autoscalerOptions", "version"), "v3"),
                        (("spec", "rayClusterSpec", "authOptions", "mode"), "password"),
                        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "volumes", 0,
                          "persistentVolumeClaim", "claim"), "xtp-hf-cache"),  # a typo of claimName
                        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "env", 0,
                          "valueFrom"), {"secretKeyRef": {"name": "xtp-hf", "key": "HF_TOKEN", "optinal": True}})):
        broken = copy.deepcopy(job)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(validators["RayJob"].iter_errors(broken)), path


def _spec():
    return _manifest("rayjob.yaml")["spec"]


def _containers(cluster):
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    workers = [c for group in cluster["workerGroupSpecs"] for c in group["template"]["spec"]["containers"]]
    return head, workers


def test_the_cronjob_runs_the_same_night_on_a_schedule():
    cron = _manifest("raycronjob.yaml")["spec"]
    assert cron["jobTemplate"] == _spec()  # one night, two ways to start it
    assert cron["schedule"] == "0 2 * * *" and cron["timeZone"] == "UTC" and cron["suspend"] is False


def test_the_night_runs_jobs_nightly_and_ends_on_its_own():
    spec = _spec()
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/nightly.py"]
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).exists() and argv[argv.index("--output") + 1].startswith("s3://")
    from xtp_ray.job.nightly import nightly_main  # noqa: F401 - what the entrypoint runs exists
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 24 * 3600
    assert 0 < spec["activeDeadlineSeconds"] <= 24 * 3600  # a night is bounded
    assert spec["backoffLimit"] == 0


def test_head_without_gpus_and_gpu_workers_from_zero_with_autoscaler_v2():
    cluster = _spec()["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["version"] == "v2"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_containers, _ = _containers(cluster)
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in head_containers)
    [gpu] = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] == gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
    assert all(c["resources"]["limits"]["nvidia.com/gpu"] == "1" for c in gpu["template"]["spec"]["containers"])


def test_credentials_from_secrets_token_auth_and_a_private_dashboard():
    cluster = _spec()["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "xtp-ray-token"}
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    assert cluster["networkPolicy"]["mode"] in ("DenyAll", "DenyAllIngress")
    head_containers, workers = _containers(cluster)
    for container in head_containers + workers:  # every Ray node reads and writes s3://
        assert {"secretRef": {"name": "xtp-s3"}} in container["envFrom"]
        assert not any(re.search("SECRET|KEY|TOKEN", e["name"]) and "value" in e for e in container.get("env", []))


def test_vllm_only_on_gpu_workers():
    cluster = _spec()["rayClusterSpec"]
    head_containers, _ = _containers(cluster)
    [gpu] = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert all(not c["image"].endswith("-gpu") for c in head_containers)
    assert all(c["image"].endswith("-gpu") for c in gpu["template"]["spec"]["containers"])
    dockerfile = (ROOT / "jobs" / "k8s" / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-cpu" in dockerfile  # the default: no vLLM
    assert 'ARG EXTRAS=""' in dockerfile and '--build-arg EXTRAS="[vllm]" -t REGISTRY/xtp-ray:0.1.0-gpu' in dockerfile


def _pods(cluster):
    """(pod spec, is the head) of the head group and each worker group."""
    yield cluster["headGroupSpec"]["template"]["spec"], True
    for group in cluster["workerGroupSpecs"]:
        yield group["template"]["spec"], False


def test_gated_models_read_a_hub_token_from_a_secret_and_the_alert_url_reaches_the_driver():
    cluster = _spec()["rayClusterSpec"]
    for pod, is_head in _pods(cluster):
        for container in pod["containers"]:  # the planner (head) and every actor read the gated models
            assert {"secretRef": {"name": "xtp-hf"}} in container["envFrom"]
            alert = {"secretRef": {"name": "xtp-alert"}} in container["envFrom"]
            assert alert is is_head  # the night's driver runs on the head: only it posts
    from xtp_ray.job.alert import WEBHOOK_ENV

    header = (ROOT / "jobs" / "k8s" / "rayjob.yaml").read_text().split("apiVersion:")[0]
    assert "xtp-hf: HF_TOKEN" in header and f"xtp-alert: {WEBHOOK_ENV}" in header  # the keys the code reads


def test_every_node_mounts_one_shared_model_cache_as_hf_home():
    claim = _manifest("hf-cache.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod, _ in _pods(_spec()["rayClusterSpec"]):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            home = {e["name"]: e.get("value") for e in container["env"]}["HF_HOME"]
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == home]
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            assert not mount.get("readOnly")  # the first night downloads into it


def test_the_memory_fit_is_checked_for_the_gpu_groups_accelerator():
    from xtp_ray.job.memory_fit import GPU_MEMORY_GB
    from xtp_ray.job.nightly import nightly_parser

    args = nightly_parser().parse_args(shlex.split(_spec()["entrypoint"])[2:])  # every flag exists
    [gpu] = [g for g in _spec()["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    product = gpu["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]  # GPU feature discovery's label
    assert product.startswith("NVIDIA-")
    assert float(args.gpu_memory_gb) == GPU_MEMORY_GB[product.removeprefix("NVIDIA-")]
