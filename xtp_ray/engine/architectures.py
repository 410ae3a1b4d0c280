"""Where the decoder layers and their submodules live, per HF architecture.

One registry keyed by the `architectures` string of a model's config (as in
pyvene / TransformerLens v3). Unknown architectures fail fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..names import MODULES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Architecture:
    layers: str  # dotted path from the CausalLM to the ModuleList of decoder layers
    ffn: str  # attribute of a decoder layer: the feed-forward (MLP) submodule
    attn: str  # attribute of a decoder layer: the self-attention submodule
    # vLLM's own model classes may name these differently (None: the same as in HF)
    vllm_layers: str | None = None
    vllm_ffn: str | None = None
    vllm_attn: str | None = None

    def in_vllm(self) -> "Architecture":
        """The same roles under the names of vLLM's model class."""
        return Architecture(layers=self.vllm_layers or self.layers, ffn=self.vllm_ffn or self.ffn,
                            attn=self.vllm_attn or self.attn)


_LLAMA_STYLE = Architecture(layers="model.layers", ffn="mlp", attn="self_attn")

REGISTRY: dict[str, Architecture] = {
    "LlamaForCausalLM": _LLAMA_STYLE,
    "MistralForCausalLM": _LLAMA_STYLE,
    "Qwen2ForCausalLM": _LLAMA_STYLE,
    "Qwen3ForCausalLM": _LLAMA_STYLE,
    # Gemma2 has post-attention and post-feedforward norms; `mlp` / `self_attn` are
    # the raw submodule outputs, before those norms and before the residual add.
    "Gemma2ForCausalLM": _LLAMA_STYLE,
    "Phi3ForCausalLM": _LLAMA_STYLE,
    "GPT2LMHeadModel": Architecture(layers="transformer.h", ffn="mlp", attn="attn"),
    # Mixture-of-experts: `mlp` is the whole sparse block (routed experts' weighted sum plus
    # any shared expert), the module whose output a cell replaces (SPEC section 1).
    "Qwen3MoeForCausalLM": _LLAMA_STYLE,
    "Qwen2MoeForCausalLM": _LLAMA_STYLE,
    "OlmoeForCausalLM": _LLAMA_STYLE,
    "MixtralForCausalLM": Architecture(layers="model.layers", ffn="mlp", attn="self_attn",
                                       vllm_ffn="block_sparse_moe"),
    "GptOssForCausalLM": Architecture(layers="model.layers", ffn="mlp", attn="self_attn", vllm_attn="attn"),
    "DeepseekV3ForCausalLM": _LLAMA_STYLE,
    "Llama4ForCausalLM": Architecture(layers="model.layers", ffn="feed_forward", attn="self_attn"),
    "Gemma3ForCausalLM": _LLAMA_STYLE,
    "Olmo2ForCausalLM": _LLAMA_STYLE,
}

class UnknownArchitectureError(ValueError):
    pass


def architecture_name(model_or_config) -> str:
    """The `architectures` string of a model, a config object, or a config.json dict."""
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, dict):
        names = config.get("architectures") or []
    else:
        names = getattr(config, "architectures", None) or []
    if not names:
        raise UnknownArchitectureError(
            "the model config has no `architectures` entry; xtp-ray needs it to find the "
            f"decoder layers. Known: {', '.join(sorted(REGISTRY))}"
        )
    return names[0]


def lookup(model_or_config) -> Architecture:
    name = architecture_name(model_or_config)
    if name not in REGISTRY:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}. Known: {', '.join(sorted(REGISTRY))}. "
            "To add one, map its `architectures` string in xtp_ray/engine/architectures.py REGISTRY "
            "to Architecture(layers=<dotted path to the decoder ModuleList>, "
            "ffn=<MLP attribute of a layer>, attn=<self-attention attribute of a layer>)."
        )
    return REGISTRY[name]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    obj = model
    for part in lookup(model).layers.split("."):
        obj = getattr(obj, part)
    return obj


def submodule(model: torch.nn.Module, module: str, layer: int) -> torch.nn.Module:
    """The module whose output a cell replaces: `ffn` -> MLP, `attn`/`attn_ref` -> attention."""
    if module not in MODULES:
        raise ValueError(f"unknown module {module!r}; choose one of {', '.join(MODULES)}")
    arch = lookup(model)
    layer_module = decoder_layers(model)[layer]
    return getattr(layer_module, arch.ffn if module == "ffn" else arch.attn)


def num_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def num_layers_of_config(config: dict) -> int | None:
    """Decoder layers from a config.json dict, without building the model."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None
