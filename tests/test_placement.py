"""Placement checks on an in-process Ray (one node, 2 CPUs, no GPU, no autoscaler), and the device rule."""
import os

import pytest

from xtp_ray.job.placement import check_feasible, device_for_actor


def test_a_request_no_live_node_can_hold_is_refused_at_once(ray_local):
    assert check_feasible(1, 0) == "a live node fits"
    with pytest.raises(ValueError, match=r"no node can hold one actor \{CPU: 1, GPU: 1\}.*no autoscaler is running"):
        check_feasible(1, 1)
    with pytest.raises(ValueError, match=r"no node can hold one actor \{CPU: 4\}"):
        check_feasible(4, 0)


def test_an_actor_without_gpus_sees_none_and_runs_on_the_cpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # as Ray leaves it for a 0-GPU actor
    assert device_for_actor(0) == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # nothing it loads can reach a GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")


def test_an_actor_holding_a_gpu_where_cuda_is_absent_fails_loudly(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError, match=r"holds 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES='0'\) but CUDA is not usable"):
        device_for_actor(1)
