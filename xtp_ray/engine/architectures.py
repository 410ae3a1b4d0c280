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

    def in_vllm(self) -> Architecture:
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
    # multimodal, run whole on text prompts: the decoder layers are its language model's
    # (AutoModelForCausalLM loads a Gemma 3 checkpoint as this class)
    "Gemma3ForConditionalGeneration": Architecture(layers="model.language_model.layers", ffn="mlp", attn="self_attn"),
}

# Multimodal checkpoints that AutoModelForCausalLM (the loader) loads as their text model alone: the config
# names the multimodal class, the model built is the text class (Llama 4: Llama4ForCausalLM, its weights
# under `language_model.`).
TEXT_MODEL_OF = {"Llama4ForConditionalGeneration": "Llama4ForCausalLM"}

# Architectures whose layers the engine cannot transplant exactly: refused at load, in one line. A cell's
# patch at the last token reaches later tokens only through attention's keys and values, which the engine
# shares as a prefix; a recurrent or linear-attention layer carries a running state instead.
_RECURRENT = ("has {what} layers, whose recurrent state the hf engine's shared prefix and per-cell rows do not "
              "carry; the engine cannot transplant it exactly")
REFUSED = {
    "Qwen3NextForCausalLM": _RECURRENT.format(what="Gated DeltaNet (linear attention)"),
    "Qwen3_5ForCausalLM": _RECURRENT.format(what="Gated DeltaNet (linear attention)"),
    "Qwen3_5MoeForCausalLM": _RECURRENT.format(what="Gated DeltaNet (linear attention)"),
    "KimiLinearForCausalLM": _RECURRENT.format(what="Kimi Delta Attention (linear attention)"),
    "MiniMaxForCausalLM": _RECURRENT.format(what="lightning (linear) attention"),
    "OlmoHybridForCausalLM": _RECURRENT.format(what="linear-attention (recurrent)"),
    "JambaForCausalLM": _RECURRENT.format(what="Mamba"),
    "BambaForCausalLM": _RECURRENT.format(what="Mamba 2"),
    "FalconH1ForCausalLM": _RECURRENT.format(what="Mamba 2"),
    "ZambaForCausalLM": _RECURRENT.format(what="Mamba"),
    "Zamba2ForCausalLM": _RECURRENT.format(what="Mamba 2"),
    "GraniteMoeHybridForCausalLM": _RECURRENT.format(what="Mamba 2"),
    "NemotronHForCausalLM": _RECURRENT.format(what="Mamba 2"),
    "MambaForCausalLM": _RECURRENT.format(what="Mamba (state-space)"),
    "Mamba2ForCausalLM": _RECURRENT.format(what="Mamba 2 (state-space)"),
    "FalconMambaForCausalLM": _RECURRENT.format(what="Mamba (state-space)"),
    "RecurrentGemmaForCausalLM": _RECURRENT.format(what="RG-LRU (recurrent)"),
    "RwkvForCausalLM": _RECURRENT.format(what="RWKV (recurrent)"),
    "xLSTMForCausalLM": _RECURRENT.format(what="xLSTM (recurrent)"),
    "Lfm2ForCausalLM": _RECURRENT.format(what="short-convolution"),
    "Lfm2MoeForCausalLM": _RECURRENT.format(what="short-convolution"),
}

class UnknownArchitectureError(ValueError):
    pass


class RefusedArchitectureError(UnknownArchitectureError):
    """An architecture the engine knows it cannot run exactly (recurrent or linear-attention layers)."""


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
    """The registry entry of a model or config; one line naming what to do where there is none."""
    name = architecture_name(model_or_config)
    if name in REFUSED:
        raise RefusedArchitectureError(f"{name} {REFUSED[name]}; refused (see README, architecture coverage)")
    if name in TEXT_MODEL_OF:
        text = TEXT_MODEL_OF[name]
        if type(model_or_config).__name__ == name:  # the multimodal model itself, not its language model
            raise UnknownArchitectureError(
                f"{name} is multimodal: the hf engine transplants within its language model; load the checkpoint "
                f"with AutoModelForCausalLM (xtp-ray's loader does), which builds {text} from it, or pass its "
                "`language_model`")
        name = text
    if name not in REGISTRY:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}. Known: {', '.join(sorted(REGISTRY))} (multimodal, through their "
            f"language model: {', '.join(sorted(TEXT_MODEL_OF))}). "
            "To add one, map its `architectures` string in xtp_ray/engine/architectures.py REGISTRY "
            "to Architecture(layers=<dotted path to the decoder ModuleList>, "
            "ffn=<MLP attribute of a layer>, attn=<self-attention attribute of a layer>), add its tiny config to "
            "xtp_ray/engine/tiny.py and check it against the reference in tests/test_families.py."
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
    """Decoder layers from a config.json dict, without building the model (a multimodal config: its text
    model's)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    if isinstance(config.get("text_config"), dict):
        return num_layers_of_config(config["text_config"])
    return None
