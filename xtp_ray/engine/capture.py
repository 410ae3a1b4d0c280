"""Forward hooks, only ever inside context managers, removed on every exit path.

Shapes: B = batch rows, T = positions in the current forward, d = hidden size.
Every hooked submodule (MLP or self-attention) returns either a tensor [B, T, d]
or a tuple whose first element is that tensor; a sparse block may return its tokens
flattened, [B * T, d] (Llama 4's MoE), which the hooks read as [B, T, d] by the
shape of the block's input.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .architectures import decoder_layers, submodule


def first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, tensor: torch.Tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def by_token(output, args, kwargs) -> torch.Tensor:
    """A hooked module's output as [B, T, d]: its first tensor, unflattened where the module returns
    [B * T, d] for an input hidden states [B, T, d]."""
    hidden = first_tensor(output)
    if hidden.dim() == 2:
        inputs = args[0] if args else kwargs["hidden_states"]  # [B, T, d]
        hidden = hidden.view(*inputs.shape[:-1], hidden.shape[-1])
    return hidden


@contextmanager
def _hooks(handles_factory) -> Iterator[None]:
    handles = []
    try:
        handles_factory(handles)
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_last_token(model, module: str, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record, for each layer, the donor value of `module` at the last position.

    Yields a dict filled during the forward: layer -> [B, d].
    - `ffn` / `attn`: the submodule's output at the last position.
    - `attn_ref`: the post-attention residual h_in + attn_out at the last position
      (the published code's attention value), h_in being the decoder layer's input.
    Inputs must be left padded so that position -1 is every row's last prompt token.
    """
    store: dict[int, torch.Tensor] = {}
    layer_inputs: dict[int, torch.Tensor] = {}

    def register(handles):
        for layer in layers:
            def on_output(_mod, args, kwargs, output, layer=layer):
                value = by_token(output, args, kwargs)[:, -1].detach()  # [B, d]
                if module == "attn_ref":
                    value = layer_inputs.pop(layer) + value
                store[layer] = value

            handles.append(submodule(model, module, layer).register_forward_hook(on_output, with_kwargs=True))
            if module == "attn_ref":
                def on_layer_input(_mod, args, kwargs, layer=layer):
                    hidden = args[0] if args else kwargs["hidden_states"]  # [B, T, d]
                    layer_inputs[layer] = hidden[:, -1].detach()

                handles.append(
                    decoder_layers(model)[layer].register_forward_pre_hook(on_layer_input, with_kwargs=True)
                )

    with _hooks(register):
        yield store


@contextmanager
def replace_rows(model, module: str, patches: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 first_call_only: bool = False) -> Iterator[None]:
    """Replace `module`'s output at the last position of chosen batch rows.

    patches: target layer -> (rows [k] long, values [k, d]). The output at
    [rows, -1] becomes values (replaced, not added); other rows are untouched. With
    first_call_only only the first forward is patched (the prefill of `generate`).
    """
    def register(handles):
        for layer, (rows, values) in patches.items():
            done = [False]

            def on_output(_mod, args, kwargs, output, rows=rows, values=values, done=done):
                if first_call_only and done[0]:
                    return output
                done[0] = True
                flat = first_tensor(output)  # [R, T, d] (or [R * T, d])
                hidden = by_token(output, args, kwargs).clone()  # [R, T, d]
                hidden[rows.to(hidden.device), -1] = values.to(hidden.device, hidden.dtype)
                return _with_first(output, hidden.view(flat.shape))

            handles.append(submodule(model, module, layer).register_forward_hook(on_output, with_kwargs=True))

    with _hooks(register):
        yield
