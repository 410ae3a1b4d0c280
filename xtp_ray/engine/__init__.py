"""The engine floor: a transplant-enabled model and the grids it runs. torch and transformers only
(vllm in `vllm.py` and `vllm_worker.py`, imported only when that engine is chosen): no ray,
pyarrow or matplotlib, so the engine and `xtp bench` run from a plain checkout on a bare GPU image.

`contract` (the `Engine` protocol, `CellResult` and the helpers every engine shares),
`architectures` (registry keyed by the HF `architectures` string), `capture` (hooks, only in context
managers), `cascade` (shared-prefix attention function), `own_cache` (the rows' own-token cache and
its reused store), `sharing` (rows that compute alike share a slot), `transfers` (host<->device
traffic, counted), `hf` (the fast grid), `reference` (the slow definition), `vllm` and `vllm_worker`
(the same contract on vLLM), `load` (choosing an engine), `models` (loading from disk or the hub),
`tiny` (tiny models and a local tokenizer), `footprint` (a model's parameters and an engine's memory
per GPU, from the config alone)."""
