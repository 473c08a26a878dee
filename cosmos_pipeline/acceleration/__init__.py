"""How a generation uses the GPU: the default mode, the opt-in fast mode, and the memory plan.

- Default mode (same math, faster; picked automatically per device): regional `torch.compile` of the
  transformer blocks, the fastest exact attention kernel measured on the device (on Hopper:
  FlashAttention-3 where the optional `fa3-fwd` package is installed, else cuDNN), and the adaLN
  modulation computed once per latent frame instead of once per token. On the CPU nothing changes,
  so the output is bit-identical to the plain diffusers call.
- Fast mode (opt-in; the output drifts, by amounts measured in benchmarks/RESULTS.md): FP8 attention
  (`kernels`) and FP8 linears, classifier-free guidance on an interval of the steps
  only, and reuse of the previous step's velocity on alternate steps (step caching).
- Memory plan: the text encoder waits in pinned host memory and visits the GPU only to encode a new
  prompt; the VAE decodes in tiles only when free memory is short; or whole-model CPU offload.

Modules: `options` (what a user asks; plain data, no torch), `plan` (options -> decisions for one device,
pure, so tests can fake a GPU), `attention` and `kernels` (attention kernels), `modulation` (per-frame
adaLN), `memory` (placement and tiling), `apply` (applying a plan to a loaded pipeline, idempotently).
`cosmos_pipeline.generate` reads the per-step levers.
"""
