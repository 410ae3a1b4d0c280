"""Loading transplant-ready models, and tiny ones built from configs for tests/defaults."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .architectures import lookup

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Tiny configs per registered architecture. Sizes are small on purpose; the
# initializer_range is large so that random weights give non-trivial, distinct
# activations at every layer (the default 0.02 makes every cell look alike).
TINY_CONFIGS = {
    "LlamaForCausalLM": ("LlamaConfig", {}),
    "MistralForCausalLM": ("MistralConfig", {"sliding_window": None}),
    "Qwen2ForCausalLM": ("Qwen2Config", {"use_sliding_window": False}),
    "Qwen3ForCausalLM": ("Qwen3Config", {"head_dim": 16}),
    "Gemma2ForCausalLM": ("Gemma2Config", {"head_dim": 16, "sliding_window": 4096,
                                            "query_pre_attn_scalar": 16}),
    "Phi3ForCausalLM": ("Phi3Config", {"pad_token_id": 0}),
    "GPT2LMHeadModel": ("GPT2Config", {}),
}


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here (no hub), adding BOS like Llama's."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")


def build_tiny_model(architecture: str, vocab_size: int, num_layers: int = 4, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0,
                     initializer_range: float = 0.2, **overrides) -> torch.nn.Module:
    """A randomly initialised model of a registered architecture, fp32, eager attention."""
    if architecture not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {architecture!r}; known: {', '.join(TINY_CONFIGS)}")
    config_name, extra = TINY_CONFIGS[architecture]
    config_cls = getattr(transformers, config_name)
    if architecture == "GPT2LMHeadModel":
        kwargs = dict(vocab_size=vocab_size, n_layer=num_layers, n_embd=hidden, n_head=heads,
                      n_positions=1024, bos_token_id=1, eos_token_id=2)
    else:
        kwargs = dict(vocab_size=vocab_size, num_hidden_layers=num_layers, hidden_size=hidden,
                      intermediate_size=hidden * 2, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    config = config_cls(**{**kwargs, **extra, "initializer_range": initializer_range, **overrides})
    config.architectures = [architecture]
    lookup(config)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)._from_config(config, attn_implementation="eager")
    return model.eval()


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
               device: str | None = None, trust_remote_code: bool = False, revision: str | None = None):
    """(model, tokenizer) from a `save_pretrained` directory or a hub id (where a hub is reachable).

    Weights load from safetensors only. Attention defaults to eager for float32 so the
    engine and the reference agree to 1e-4; sdpa otherwise.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if attn_implementation is None:
        attn_implementation = "eager" if dtype == "float32" else "sdpa"
    local = Path(name_or_path).is_dir()
    config = transformers.AutoConfig.from_pretrained(name_or_path, revision=revision,
                                                     trust_remote_code=trust_remote_code)
    lookup(config)  # fail fast, before loading any weights
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, revision=revision, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, use_safetensors=True,
        local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1",
    ).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                              trust_remote_code=trust_remote_code)
    return model, tokenizer
