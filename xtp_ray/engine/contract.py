"""The contract every engine keeps (`hf.HFEngine`, `vllm.VllmEngine`): `Engine`, what the pipeline
calls; `CellResult`, what a grid returns per cell; and the helpers engines share: stop tokens, left-padded
prompts, option log-probs from next-token logits. torch only, engine-neutral."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..cells import Cell


@dataclass
class CellResult:
    cell: Cell
    token_ids: list[int] = field(default_factory=list)  # greedy continuation, eos included
    logits: torch.Tensor | None = None  # [V] next-token logits at the patched position
    option_logprobs: list[float] | None = None  # per option, from next-token log-probs


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def trim_at_stop(tokens: list[int], stop) -> list[int]:
    """A continuation up to and including its first stop token (generate pads after it)."""
    end = next((k + 1 for k, token in enumerate(tokens) if token in stop), len(tokens))
    return tokens[:end]


def encode_left_padded(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T], mask [B, T], left padded so position -1 is each prompt's last token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    if enc["input_ids"].shape[1] == 0 or (enc["attention_mask"].sum(-1) == 0).any():
        raise ValueError("empty prompt: it has no tokens")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def option_logprobs(logits: torch.Tensor, option_token_ids: list[list[int]]) -> list[float]:
    """log P(option) at one position: logsumexp of the log-probs of the option's tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [V]
    return [torch.logsumexp(logp[ids], dim=0).item() for ids in option_token_ids]


def option_logprobs_all(logits: torch.Tensor, option_token_ids: list[list[list[int]]]) -> list[list[list[float]]]:
    """log P(option) for every row at once: [B, n, V] logits -> [b][c][k] floats.

    option_token_ids[b][k]: the token ids of option k of instance b. One gather and one
    masked logsumexp over a padded [B, K, M] index, no per-cell loop.
    """
    batch = logits.shape[0]
    options = max(len(o) for o in option_token_ids)
    width = max(len(ids) for o in option_token_ids for ids in o)
    index = torch.zeros(batch, options, width, dtype=torch.long)
    valid = torch.zeros(batch, options, width, dtype=torch.bool)
    for b, per_option in enumerate(option_token_ids):
        for k, ids in enumerate(per_option):
            index[b, k, :len(ids)] = torch.tensor(ids)
            valid[b, k, :len(ids)] = True
    index, valid = index.to(logits.device), valid.to(logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, n, V]
    picked = torch.gather(logp, 2, index.view(batch, 1, -1).expand(-1, logp.shape[1], -1))
    picked = picked.view(batch, logp.shape[1], options, width).masked_fill(~valid[:, None], float("-inf"))
    table = torch.logsumexp(picked, dim=-1).tolist()  # [B][n][K]
    return [[row[:len(option_token_ids[b])] for row in table[b]] for b in range(batch)]


def record_next_token(results: list[CellResult], logits: torch.Tensor,
                      option_token_ids: list[list[int]] | None) -> None:
    """One instance's rows (results[r] is row r) from their next-token logits [R, V]: the logits on the
    host and, given the instance's options, each row's option log-probs."""
    table = option_logprobs_all(logits[None], [option_token_ids]) if option_token_ids else None
    for r, result in enumerate(results):
        result.logits = logits[r].float().cpu()
        if table is not None:
            result.option_logprobs = table[0][r]


class Engine(Protocol):
    """What the pipeline (`job.actor`) drives: an engine loaded once per actor (`load.load_engine`).

    run_grid returns, per instance (donor, recipient pair), [vanilla, *cells] results. max_new_tokens=0
    scores only (no decoding); option_token_ids[b][k]: the token ids of option k of instance b.
    cells_per_chunk and memory_budget_mb bound the cells per forward (the engine may shrink them).
    """

    tokenizer: object
    num_layers: int
    context_length: int | None

    def run_grid(self, donors: list[str], recipients: list[str], cells: list[Cell], module: str,
                 max_new_tokens: int = 20, cells_per_chunk: int | None = None,
                 option_token_ids: list[list[list[int]]] | None = None, keep_logits: bool = False,
                 memory_budget_mb: float | None = None) -> list[list[CellResult]]: ...

    def close(self) -> None: ...
