"""Tiny saved models of the families the vllm engine is tested on beyond Llama and Qwen2.

Shapes vLLM's CPU build can run: head size 32 (its attention kernel's smallest), 4 query
heads over 2 KV heads (tensor parallel 2 divides both), mixtures of 4 experts, top 2.
The tokenizer is xtp_ray.engine.tiny's, trained here; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from xtp_ray.engine.tiny import tokenizer_corpus, train_tokenizer

HIDDEN = 64
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32
EXPERTS, TOP_K = 4, 2

_COMMON = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
               max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               tie_word_embeddings=False, initializer_range=0.2)

# architecture -> (config class, its own fields)
FAMILIES = {
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", dict(intermediate_size=96, moe_intermediate_size=48,
                                                   num_experts=EXPERTS, num_experts_per_tok=TOP_K,
                                                   norm_topk_prob=True, decoder_sparse_step=1)),
    # a shared expert beside the routed ones (sigmoid-gated); vLLM takes head size = hidden / heads
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", dict(hidden_size=128, intermediate_size=96, moe_intermediate_size=48,
                                                   shared_expert_intermediate_size=64, num_experts=EXPERTS,
                                                   num_experts_per_tok=TOP_K, norm_topk_prob=False,
                                                   decoder_sparse_step=1, use_sliding_window=False)),
    # q/k norms over all heads at once (vLLM gathers the ranks' heads for them); head size = hidden / heads
    "OlmoeForCausalLM": ("OlmoeConfig", dict(hidden_size=128, intermediate_size=48, num_experts=EXPERTS,
                                             num_experts_per_tok=TOP_K, norm_topk_prob=False)),
    "MixtralForCausalLM": ("MixtralConfig", dict(intermediate_size=96, num_local_experts=EXPERTS,
                                                 num_experts_per_tok=TOP_K, sliding_window=None)),
    "GptOssForCausalLM": ("GptOssConfig", dict(intermediate_size=128, num_local_experts=EXPERTS,
                                               num_experts_per_tok=TOP_K, sliding_window=64,
                                               max_position_embeddings=131072)),  # YaRN: 32 x 4096
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(intermediate_size=96, sliding_window=64,
                                                   query_pre_attn_scalar=HEAD_DIM)),
}


def family_config(architecture: str, vocab_size: int, num_layers: int, **overrides):
    config_name, own = FAMILIES[architecture]
    config = getattr(transformers, config_name)(**{**_COMMON, **own, "vocab_size": vocab_size,
                                                   "num_hidden_layers": num_layers, **overrides})
    config.architectures = [architecture]
    return config


def save_family_model(path: str | Path, architecture: str, num_layers: int = 3, seed: int = 0,
                      **overrides) -> Path:
    """A random fp32 model of `architecture` and the local tokenizer, `save_pretrained` to path."""
    path = Path(path)
    tokenizer = train_tokenizer(tokenizer_corpus(), 512)
    config = family_config(architecture, len(tokenizer), num_layers, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)._from_config(config, attn_implementation="eager",
                                                             dtype=torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
