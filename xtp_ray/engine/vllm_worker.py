"""The transplant inside vLLM's worker: a worker extension (`worker_extension_cls`).

vLLM mixes this class into its GPU/CPU worker; `LLM.collective_rpc` calls its
methods on every worker (every tensor-parallel rank). `xtp_install` registers
forward hooks on every decoder layer's MLP or sparse MoE block (ffn) or self-attention
(attn) module; the hooks only act on requests whose `SamplingParams.extra_args["xtp"]`
asks:

- `{"capture": KEY}`: record the module output at the request's last prompt token
  on every layer (a donor pass); `xtp_fetch` returns them;
- `{"donor": KEY, "source": i, "target": j}`: at layer j, replace the module output
  at the request's last prompt token by the donor's layer-i value (a cell).

vLLM flattens all scheduled tokens of all requests into one batch. Request k's
tokens this step are rows [qsl[k], qsl[k+1]) at positions c .. c + n - 1, c being
its computed tokens. Its last prompt token (position P - 1) is in this step when
c <= P - 1 < c + n, at row qsl[k] + (P - 1 - c). That covers prefix-cache hits,
chunked prefill and a re-prefill after preemption, and never fires on a decode step
(c >= P there). The hooked modules are the registry's, under vLLM's names
(`Architecture.in_vllm()`). Their outputs are all-reduced and full-size on every
rank (a mixture of experts' sparse block reduces inside its fused experts), so every
rank applies the same patch; `xtp_digest` lets the engine check that the ranks agree.

Hooks need an eager model (`enforce_eager=True`: compiled graphs bypass them) and
the V1 model runner with a persistent `input_batch` (`VLLM_USE_V2_MODEL_RUNNER=0`).
"""
from __future__ import annotations

from .architectures import lookup


def _resolve(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def hooked_modules(model, hf_config, module: str) -> list:
    """Per decoder layer, the module whose output a cell replaces, under vLLM's names for the model's
    architecture (the registry's `Architecture.in_vllm()`: gpt-oss's attention is `attn`, Mixtral's
    sparse block `block_sparse_moe`)."""
    if module not in ("ffn", "attn"):
        raise ValueError(f"the vllm engine supports modules ffn and attn, not {module!r}")
    names = lookup(hf_config).in_vllm()
    return [getattr(layer, names.ffn if module == "ffn" else names.attn) for layer in _resolve(model, names.layers)]


class TransplantWorker:
    """Methods vLLM adds to its worker; `self.model_runner` is the worker's model runner."""

    def xtp_install(self, module: str) -> int:
        """Hooks on every decoder layer's `module`; returns how many are installed."""
        self.xtp_remove()
        runner = self.model_runner
        modules = hooked_modules(runner.model, runner.model_config.hf_config, module)
        self.xtp_captured = getattr(self, "xtp_captured", {})
        self.xtp_step_rows = []
        # which rows to act on is worked out once per forward, not once per layer
        self.xtp_handles = [runner.model.register_forward_pre_hook(self._xtp_plan_step)]
        for index, target in enumerate(modules):
            self.xtp_handles.append(target.register_forward_hook(self._xtp_hook(index)))
        return len(self.xtp_handles) - 1  # the layer hooks

    def xtp_remove(self) -> int:
        """Remove every hook this extension installed; returns how many are left (0)."""
        for handle in getattr(self, "xtp_handles", []):
            handle.remove()
        self.xtp_handles = []
        return self.xtp_hook_count()

    def xtp_hook_count(self) -> int:
        """Forward hooks and pre-hooks on the model's modules, all of them (not only ours)."""
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in self.model_runner.model.modules())

    def xtp_fetch(self, keys: list[str]) -> dict[str, list[list[float]]]:
        """Captured donor values: key -> [L][d] (as Python floats, to cross processes)."""
        captured = getattr(self, "xtp_captured", {})
        return {key: [captured[key][layer].tolist() for layer in sorted(captured[key])] for key in keys
                if key in captured}

    def xtp_digest(self, keys: list[str]) -> dict[str, list[list[float]]]:
        """Per captured donor and layer, (sum, sum of squares) in float64: enough to tell ranks apart."""
        captured = getattr(self, "xtp_captured", {})
        digests = {}
        for key in keys:
            values = [captured[key][layer].double() for layer in sorted(captured.get(key, {}))]
            digests[key] = [[float(v.sum()), float((v * v).sum())] for v in values]
        return digests

    def xtp_forget(self, keys: list[str]) -> None:
        captured = getattr(self, "xtp_captured", {})
        for key in keys:
            captured.pop(key, None)

    def _xtp_rows(self) -> list[tuple[int, dict]]:
        """(row in the flattened batch, plan) of each request whose last prompt token is in this step."""
        runner = self.model_runner
        batch = runner.input_batch
        starts = runner.query_start_loc.np
        rows = []
        for k, req_id in enumerate(batch.req_ids):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            plan = (params.extra_args or {}).get("xtp") if params is not None else None
            if not plan:
                continue
            computed, prompt = int(batch.num_computed_tokens_cpu[k]), int(batch.num_prompt_tokens[k])
            start, end = int(starts[k]), int(starts[k + 1])
            if computed <= prompt - 1 < computed + (end - start):
                rows.append((start + prompt - 1 - computed, plan))
        return rows

    def _xtp_plan_step(self, _module, _args):
        self.xtp_step_rows = self._xtp_rows()

    def _xtp_hook(self, layer: int):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [tokens, d]
            for row, plan in self.xtp_step_rows:
                if "capture" in plan:
                    # clone: the next fused add-norm overwrites this buffer in place
                    self.xtp_captured.setdefault(plan["capture"], {})[layer] = hidden[row].detach().clone()
                elif plan.get("target") == layer:
                    value = self.xtp_captured[plan["donor"]][plan["source"]]
                    hidden[row] = value.to(device=hidden.device, dtype=hidden.dtype)
            return output
        return hook
