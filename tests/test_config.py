"""Bad configuration and unsafe models are refused with one clear message, before any model loads."""
import json

import pytest

from xtp_ray.engine.models import load_model
from xtp_ray.engine.tiny import build_tiny_model
from xtp_ray.job.checks import check_writable, preflight
from xtp_ray.job.config import ConfigError, RunConfig, load_config, validate
from xtp_ray.job.plan import plan


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("tasks: [xnli, nope]", "task 'nope' unknown; tasks: xnli, xcopa"),
    ("modules: [mlp]", "module 'mlp' unknown; choose one of ffn, attn, attn_ref"),
    ("batch_size: 0", "batch_size must be positive, got 0"),
    ("min_actors: -1", "min_actors must be positive"),
    ("min_actors: 3\nmax_actors: 2", "max_actors (2) is below min_actors (3)"),
    ("cells: 'full,1'", "cells 'full,1': expected full, target-first, coarse"),
    ("scoring: logprobs\ntasks: [xquad]", "scoring logprobs needs option tasks; xquad"),
    ("dtype: fp8", "dtype 'fp8' unknown"),
    ("run_id: ../escape", "run_id '../escape'"),
    ("bogus: 1", "unknown field(s) bogus"),
    ("batch_size: many", "field 'batch_size': cannot read 'many'"),
    ("[1, 2]", "expected a mapping of fields"),
    ("model: tiny:NopeForCausalLM", "expected tiny:<architecture>"),
    # the hf engine's multi-device path (device_map auto) has never run: refused, pointing to vllm
    ("num_gpus_per_actor: 2", "the hf engine runs on one GPU per actor, not 2: for models beyond one GPU use "
                              "engine: vllm"),
    ("tensor_parallel_size: 2", "tensor_parallel_size 2 needs engine: vllm"),
    ("engine: vllm\nnum_gpus_per_actor: 4\ntensor_parallel_size: 2",
     "tensor_parallel_size 2 differs from num_gpus_per_actor 4: on GPUs vLLM runs one rank per GPU"),
    ("tensor_parallel_size: 0", "tensor_parallel_size must be positive"),
    ("gpu_memory_gb: -80", "gpu_memory_gb must be positive"),
])
def test_bad_config_fields_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(path=_write(tmp_path, text))


def test_tensor_parallel_defaults_to_the_gpus_held_and_may_exceed_them_on_cpu_actors():
    from xtp_ray.job.config import tensor_parallel_size

    assert tensor_parallel_size(RunConfig(engine="vllm", num_gpus_per_actor=8)) == 8
    assert tensor_parallel_size(RunConfig(engine="vllm")) == 1
    cpu_tp2 = RunConfig(engine="vllm", tensor_parallel_size=2)  # CPU actors: ranks are processes
    validate(cpu_tp2)
    assert tensor_parallel_size(cpu_tp2) == 2


def test_flags_override_the_file(tmp_path):
    import argparse

    from xtp_ray.job.config import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--config", _write(tmp_path, "batch_size: 2\nlangs: [sw]"), "--langs", "de,fr",
                              "--limit", "null"])
    config = load_config(args)
    assert (config.batch_size, config.langs, config.limit) == (2, ["de", "fr"], None)


def test_unknown_language_or_split_lists_what_exists():
    with pytest.raises(ValueError, match="unknown language.*xx.*languages: ar, bg, de"):
        plan(RunConfig(tasks=["xnli"], langs=["sw", "xx"]))
    with pytest.raises(ValueError, match="unknown split 'train' for xnli; splits: sample, unseen, dev"):
        plan(RunConfig(tasks=["xnli"], splits=["train"]))


def test_empty_dataset_is_refused(tmp_path):
    for sub in ("split", "ans", "ans_lang"):
        (tmp_path / "XNLI" / "XNLI_sample" / sub).mkdir(parents=True)
        for lang in ("en", "sw"):
            (tmp_path / "XNLI" / "XNLI_sample" / sub / f"{lang}.json").write_text("")
    with pytest.raises(ValueError, match="empty dataset"):
        plan(RunConfig(tasks=["xnli"], langs=["sw"], data_root=str(tmp_path)))


def _saved(tmp_path, tokenizer, architecture="LlamaForCausalLM", **save_kwargs):
    model = build_tiny_model(architecture, len(tokenizer), num_layers=2)
    path = tmp_path / "model"
    model.save_pretrained(path, **save_kwargs)
    tokenizer.save_pretrained(path)
    return path


def test_unknown_architecture_and_layer_range_fail_before_loading(tmp_path, tokenizer):
    path = _saved(tmp_path, tokenizer)
    assert preflight(RunConfig(model=str(path), cells="1:1")) == 2
    with pytest.raises(ValueError, match="source layer 5 in cell '5:0' is out of range for a model with 2 layers"):
        preflight(RunConfig(model=str(path), cells="5:0"))
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["MysteryForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown architecture 'MysteryForCausalLM'.*To add one"):
        preflight(RunConfig(model=str(path)))


def test_output_that_is_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="is not writable"):
        check_writable(RunConfig(output=str(blocker / "out")))


def test_paths_may_not_escape_the_allowed_roots(tmp_path):
    inside = tmp_path / "models"
    inside.mkdir()
    out = str(tmp_path / "out")
    validate(RunConfig(model=str(inside), allowed_roots=[str(tmp_path)], output=out))
    with pytest.raises(ConfigError, match=r"escapes the allowed roots .* via '\.\.'"):
        validate(RunConfig(model=f"{inside}/../../etc", allowed_roots=[str(tmp_path)], output=out))
    with pytest.raises(ConfigError, match="data_root '/etc' is outside the allowed roots"):
        validate(RunConfig(data_root="/etc", allowed_roots=[str(tmp_path)], output=out))
    # a local datasets directory behind hf: is checked like any other path; a hub name is not a path
    with pytest.raises(ConfigError, match="data_root '/etc/ds' is outside the allowed roots"):
        validate(RunConfig(data_root="hf:/etc/ds", allowed_roots=[str(tmp_path)], output=out))
    validate(RunConfig(data_root="hf:org/name", allowed_roots=[str(tmp_path)], output=out))
    # and so is the output
    with pytest.raises(ConfigError, match="output '/tmp/elsewhere' is outside the allowed roots"):
        validate(RunConfig(allowed_roots=[str(tmp_path)], output="/tmp/elsewhere"))


def test_pickled_weights_are_never_loaded(tmp_path, tokenizer):
    import torch

    path = _saved(tmp_path, tokenizer)
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")  # a pickle, as old repos ship
    (path / "model.safetensors").unlink()
    with pytest.raises(Exception, match="safetensors|model.safetensors"):
        load_model(str(path))


def test_remote_code_needs_the_config_to_allow_it(tmp_path, tokenizer):
    path = _saved(tmp_path, tokenizer)
    (path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    model, _ = load_model(str(path))  # a known model_type: HF's own class, the repo's code never runs
    assert type(model).__module__.startswith("transformers.models.llama")
    config["model_type"] = "evil-model"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(path))
    assert RunConfig().trust_remote_code is False


# Pinned on main before the config became a pydantic model (aceb764): a resume compares the config digest of
# the committed shards with the run's, and manifest.json records to_json(); neither may change.
PINNED = {None: ("9eaba05720b7c1a0", "1286a2e67ec745df"),
          "paper.yaml": ("8a59dee24e4bf886", "c90a80614c72790d"),
          "llama70b.yaml": ("b360eab0a41dd06c", "cbc27199651cbaa7")}


@pytest.mark.parametrize("name", sorted(PINNED, key=str))
def test_digest_and_json_of_existing_configs_are_unchanged(name):
    import hashlib
    from pathlib import Path

    config = RunConfig() if name is None else load_config(path=str(Path(__file__).parents[1] / "jobs" / name))
    as_json = hashlib.sha256(json.dumps(config.to_json()).encode()).hexdigest()[:16]  # field order and types too
    assert (config.digest(), as_json) == PINNED[name]


def _schema_cli():
    """`xtp config --schema` in its own process: (exit code, the schema, the heavy modules it imported)."""
    import subprocess
    import sys

    code = ("import sys\nfrom xtp_ray.cli import main\ncode = main(['config', '--schema'])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'ray', 'vllm') if m in sys.modules))\n"
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    schema, _, heavy = done.stdout.rpartition("HEAVY")
    return done.returncode, json.loads(schema), heavy.strip(), done.stderr


def test_every_run_config_in_jobs_follows_the_schema_and_loads():
    from pathlib import Path

    import jsonschema
    import yaml

    code, schema, heavy, err = _schema_cli()
    assert code == 0 and heavy == "[]", (heavy, err)  # editors' schema without the engine
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    run_configs = [p for p in sorted((Path(__file__).parents[1] / "jobs").glob("*.yaml"))
                   if set(yaml.safe_load(p.read_text())) <= set(RunConfig.model_fields)]
    assert {p.name for p in run_configs} >= {"paper.yaml", "llama70b.yaml"}
    for path in run_configs:
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
        load_config(path=str(path))
    assert not list(validator.iter_errors(RunConfig().to_json()))
    # what the loader refuses, an editor flags too
    for bad in ({"limit": 2.7}, {"limit": True}, {"modules": ["mlp"]}, {"bogus": 1}, {"run_id": "../x"}, {"langs": []},
                {"engine": "tgi"}, {"batch_size": 0}, {"cells": "full,1"}, {"lease_ttl_s": 0.5}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(ConfigError):
            RunConfig(**bad)


def test_an_error_names_the_flag_or_the_file_it_came_from(tmp_path):
    import argparse

    from xtp_ray.job.config import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    path = _write(tmp_path, "limit: 2.7")
    with pytest.raises(ConfigError, match=f"^{path}: field 'limit': cannot read 2.7 as an integer$"):
        load_config(parser.parse_args(["--config", path]))
    with pytest.raises(ConfigError, match="^--limit: field 'limit': cannot read '2.7' as an integer$"):
        load_config(parser.parse_args(["--config", path, "--limit", "2.7"]))
    with pytest.raises(ConfigError, match="^--memory-budget-mb: field 'memory_budget_mb': cannot read 'nan' as a "
                                          "finite number$"):
        load_config(parser.parse_args(["--memory-budget-mb", "nan"]))
    assert load_config(parser.parse_args(["--config", path, "--limit", "3"])).limit == 3  # the flag wins


@pytest.mark.parametrize("text, value", [("limit: '3'", 3), ("limit: none", None), ("num_gpus_per_actor: 1", 1.0),
                                         ("trust_remote_code: yes", True), ("langs: de, fr", ["de", "fr"]),
                                         ("run_id: 2024", "2024"), ("memory_budget_mb: '1e3'", 1000.0)])
def test_values_read_as_before(tmp_path, text, value):
    config = load_config(path=_write(tmp_path, text))
    got = getattr(config, text.split(":")[0])
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["limit: 3.0", "limit: true", "batch_size: '2.5'", "num_cpus_per_actor: true",
                                  "lease_ttl_s: .nan", "max_prompt_tokens: ''", "langs: [true]", "run_id: false"])
def test_values_refused_as_before(tmp_path, text):
    with pytest.raises(ConfigError, match=f"field '{text.split(':')[0]}': cannot read"):
        load_config(path=_write(tmp_path, text))


def test_replace_validates_the_copy():
    config = RunConfig()
    assert config.replace(batch_size=2).batch_size == 2 and config.batch_size == 4
    with pytest.raises(ConfigError, match="batch_size must be positive, got 0"):
        config.replace(batch_size=0)
    with pytest.raises(ConfigError, match="the hf engine runs on one GPU per actor"):
        config.replace(num_gpus_per_actor=2)
