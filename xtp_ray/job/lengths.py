"""Prompts beyond a run's token limit, counted on the driver before launch.

An actor skips an instance whose donor or recipient prompt, plus the new tokens, exceeds
`max_prompt_tokens` (else the model's context), and with it the rest of its group
(`GridSearch._too_long`): the same rule, applied to the plan's instances, says per task,
split and language how many the run would leave out. Prompt lengths come from the model's
own tokenizer where the model directory carries one, else from characters
(`cost.estimate_tokens`, the cost model's estimate); every line says which.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .config import TINY_PREFIX, RunConfig

ESTIMATED = "estimated from characters (~4 ASCII characters a token, one otherwise)"


@dataclass(frozen=True)
class TooLong:
    """The instances of one (task, split, lang) the run would leave out for their prompts' length."""
    task: str
    split: str
    lang: str
    instances: int  # of the slice
    too_long: int  # a prompt over the limit
    left_out: int  # those and the rest of their groups
    longest: int  # tokens of the longest prompt among them
    limit: int  # tokens, new tokens included
    new_tokens: int
    basis: str  # how prompts were counted

    def line(self) -> str:
        approx = "" if self.basis == "the model's tokenizer" else "~"
        return (f"{self.task} {self.split} {self.lang}: {approx}{self.left_out} of {self.instances} instance(s) would "
                f"be left out: {self.too_long} with a prompt over {self.limit - self.new_tokens} tokens (the limit "
                f"of {self.limit} less {self.new_tokens} new tokens; longest {approx}{self.longest}), counted by "
                f"{self.basis}")

    def to_json(self) -> dict:
        return asdict(self)


def token_counter(config: RunConfig) -> tuple[Callable[[str], int], str]:
    """(prompt -> tokens, basis): the model's tokenizer where its local directory carries one, else the
    characters' estimate."""
    from .checks import TOKENIZER_FILES
    from .cost import estimate_tokens

    model = config.model
    if not model.startswith(TINY_PREFIX) and os.path.isdir(model) and set(os.listdir(model)) & set(TOKENIZER_FILES):
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model, trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError, ImportError) as exc:  # the actor will say so; the plan goes on estimating
            return estimate_tokens, f"{ESTIMATED}: the model's tokenizer did not load ({exc})"
        return (lambda prompt: len(tokenizer(prompt).input_ids)), "the model's tokenizer"
    return estimate_tokens, ESTIMATED


def token_limit(config: RunConfig, model_config: dict) -> int | None:
    """The tokens a prompt and its new tokens may take: `max_prompt_tokens`, else the model's context."""
    from ..engine.footprint import dims

    return config.max_prompt_tokens or dims(model_config)["context"]


def too_long(config: RunConfig, model_config: dict, slices: dict[tuple[str, str, str], list],
             count: Callable[[str], int], basis: str) -> list[TooLong]:
    """Per (task, split, lang) with any, the instances the run would leave out for their length."""
    limit = token_limit(config, model_config)
    if not limit:
        return []
    new_tokens = config.new_tokens
    found = []
    for (task, split, lang), instances in slices.items():
        lengths = {i.id: max(count(i.donor), count(i.recipient)) for i in instances}
        over = {i.id for i in instances if lengths[i.id] + new_tokens > limit}
        if not over:
            continue
        lost = {i.extra.get("group") for i in instances if i.id in over} - {None}  # a group goes whole
        left_out = sum(1 for i in instances if i.id in over or i.extra.get("group") in lost)
        found.append(TooLong(task, split, lang, len(instances), len(over), left_out,
                             max(lengths[i] for i in over), limit, new_tokens, basis))
    return found
