"""Tiny models built from configs, with a tokenizer trained here: tests, bench, defaults.

Nothing is downloaded: the tokenizer is trained on the bundled sample prompts.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .architectures import lookup

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
    # Mixture-of-experts families: few experts, two per token; every layer sparse unless noted
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                                               "moe_intermediate_size": 32}),
    # a shared expert beside the routed ones, and one dense layer (mlp_only_layers)
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2,
                                               "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
                                               "mlp_only_layers": [0]}),
    "OlmoeForCausalLM": ("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}),
    "MixtralForCausalLM": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                             "sliding_window": None}),
    # attention sinks; sliding and full layers alternate (a window prompts outgrow, 20 new tokens fit it)
    "GptOssForCausalLM": ("GptOssConfig", {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                           "sliding_window": 24}),
    # MLA (value head 16 != query/key head 8 + 16; every head its own keys: `tiny_config` gives it as many
    # KV heads as heads), one dense first layer, routed and shared experts
    "DeepseekV3ForCausalLM": ("DeepseekV3Config", {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
                                                   "qk_nope_head_dim": 16, "v_head_dim": 16,
                                                   "n_routed_experts": 4, "n_shared_experts": 1,
                                                   "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
                                                   "moe_intermediate_size": 32, "first_k_dense_replace": 1,
                                                   "rope_interleave": True}),
    # feed_forward; MoE on every other layer (with a shared expert); chunked attention on the RoPE layers,
    # global attention without RoPE (NoPE) on the others
    "Llama4ForCausalLM": ("Llama4TextConfig", {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 1,
                                               "interleave_moe_layer_step": 2, "intermediate_size_mlp": 128,
                                               "no_rope_layer_interval": 2, "attention_chunk_size": 24}),
    # sliding (local RoPE) and global layers, q/k norms
    "Gemma3ForCausalLM": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 24,
                                               "sliding_window_pattern": 2}),
    "Olmo2ForCausalLM": ("Olmo2Config", {}),
}

# Multimodal checkpoints of those families: (config class, text architecture, a tiny vision tower's config).
TINY_MULTIMODAL = {
    "Gemma3ForConditionalGeneration": ("Gemma3Config", "Gemma3ForCausalLM",
                                       {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "image_size": 28, "patch_size": 14}),
    "Llama4ForConditionalGeneration": ("Llama4Config", "Llama4ForCausalLM",
                                       {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                                        "vision_output_dim": 32, "projector_input_dim": 32,
                                        "projector_output_dim": 64}),
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


def tiny_config(architecture: str, vocab_size: int, num_layers: int = 4, hidden: int = 64, heads: int = 4,
                kv_heads: int = 2, initializer_range: float = 0.2, **overrides):
    """The transformers config of a tiny model of a registered architecture (or a multimodal one of
    TINY_MULTIMODAL: the text model's tiny config with a tiny vision tower)."""
    if architecture in TINY_MULTIMODAL:
        config_name, text_architecture, vision = TINY_MULTIMODAL[architecture]
        text = tiny_config(text_architecture, vocab_size, num_layers, hidden, heads, kv_heads, initializer_range,
                           **overrides)
        config = getattr(transformers, config_name)(text_config=text.to_dict(), vision_config=vision,
                                                    image_token_index=5)
        config.architectures = [architecture]
        return config
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
        if architecture == "DeepseekV3ForCausalLM":  # MLA expands its latents into every head's own keys
            kwargs["num_key_value_heads"] = heads
    config = config_cls(**{**kwargs, **extra, "initializer_range": initializer_range, **overrides})
    config.architectures = [architecture]
    lookup(config)
    return config


def build_tiny_model(architecture: str, vocab_size: int, num_layers: int = 4, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0,
                     initializer_range: float = 0.2, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", attn_implementation: str = "eager",
                     **overrides) -> torch.nn.Module:
    """A randomly initialised model of a registered architecture (default fp32, eager attention),
    built directly on `device` in `dtype` (a 7B shape never passes through host memory)."""
    config = tiny_config(architecture, vocab_size, num_layers, hidden, heads, kv_heads, initializer_range,
                         **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, architecture)._from_config(config, attn_implementation=attn_implementation,
                                                                 dtype=dtype)
    return model.eval()


def tokenizer_corpus() -> list[str]:
    """Prompts of the bundled XNLI and XCOPA sample splits, every language."""
    root = resources.files("xtp_ray") / "data" / "xtransplant_release"
    texts = []
    for split_dir in (root / "XNLI" / "XNLI_sample" / "split", root / "XCOPA" / "XCOPA_sample" / "split"):
        for path in sorted(split_dir.iterdir(), key=lambda p: p.name):
            texts.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return texts


def save_tiny_model(path: str | Path, architecture: str = "LlamaForCausalLM", vocab_size: int = 512,
                    **model_kwargs) -> Path:
    """Build a tiny model + locally trained tokenizer and `save_pretrained` both to path."""
    path = Path(path)
    tokenizer = train_tokenizer(tokenizer_corpus(), vocab_size)
    model = build_tiny_model(architecture, len(tokenizer), **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
