"""Every transfer between host and device in the engine's decode loop goes through here, counted.

A step of decoding should make at most one device->host transfer (the chosen tokens, which
the host needs to plan the next step) and at most one host->device transfer (every layer's
row plan in one buffer). `xtp bench --overhead` and the tests read the counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


class Counters:
    """Process-wide counters (a dataclass's fields) that a bench reads as differences:
    `before = c.snapshot()`, run, `c.since(before)`."""

    def snapshot(self) -> dict:
        return asdict(self)

    def since(self, snapshot: dict) -> dict:
        return {name: getattr(self, name) - count for name, count in snapshot.items()}


@dataclass
class TransferCounts(Counters):
    to_host: int = 0  # device->host (each one waits for the device)
    to_device: int = 0  # host->device


COUNTS = TransferCounts()


class HostCopy:
    """A device->host copy under way: on a GPU, into pinned memory without blocking, behind an event on
    the tensor's stream, so that the host may queue more work before it waits (`wait`) for the copy alone
    and not for what it queued after. On a CPU the tensor itself."""

    def __init__(self, tensor: torch.Tensor):
        COUNTS.to_host += 1
        self.event = None
        if tensor.is_cuda:
            self.buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.buffer.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(tensor.device))
        else:
            self.buffer = tensor.detach()

    def wait(self) -> np.ndarray:
        """The host array, once the copy is done (blocks on the copy, not on work queued after it)."""
        if self.event is not None:
            self.event.synchronize()
        return self.buffer.cpu().numpy()


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor as a host array (one blocking transfer)."""
    return HostCopy(tensor).wait()


def to_device(array: np.ndarray, device) -> torch.Tensor:
    """A host array on `device`: from pinned memory without blocking the host on a GPU, as it is on a CPU."""
    COUNTS.to_device += 1
    tensor = torch.from_numpy(array)
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
