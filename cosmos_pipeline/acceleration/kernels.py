"""GPU kernels behind the acceleration levers: a Triton attention kernel (bf16 or FP8) and FP8 linears.

FP8 (e4m3) is a fast-mode lever: inputs are quantised on the fly with scales chosen so that values use
e4m3's range, products accumulate in float32, and the output drifts from bf16 by an amount measured
in benchmarks/RESULTS.md.

- Attention: one FlashAttention-2 style kernel (online softmax, one program per 128 queries of one
  head). Cosmos RMS-normalises Q and K per head, so one scale per head fits them; V gets one scale per
  channel; the probabilities P are stored as 256·p so that they stay out of e4m3's subnormals (the
  factor cancels in the softmax normalisation). On Hopper, FP8 needs V with the sequence axis
  contiguous, so V is handed over transposed. `smooth_kv` centres K and V first where a kernel needs
  it (FlashAttention-3's FP8 path does; this kernel measured 0.5% error on the model's own inputs
  without it, and centring cost 0.5 s per 2B forward).
- Linear: `torch._scaled_mm` with a per-token activation scale and a per-output-channel weight scale.

Triton is imported lazily: this module imports (and its CPU reference runs) without it.
"""

import math

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
P_SCALE_LOG2 = 8.0  # P is stored as 2**8 * p: e4m3 keeps 3 mantissa bits down to 2**-6 / 256
LOG2_E = 1.4426950408889634

_kernel = None


def _build_kernel():
    """Define the Triton kernel once, on first use (Triton may be absent where it is never used)."""
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_n in (64, 128)
        for warps in (4, 8)
        for stages in (2, 3, 4)
    ]

    @triton.autotune(configs=configs, key=["N_KV", "HEAD_DIM", "IS_FP8"])
    @triton.jit
    def attention_kernel(
        Q, K, V, Out, QS, KS, VS, sm_scale_log2,
        sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, svd, sob, soh, son,
        H, N_Q, N_KV,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IS_FP8: tl.constexpr, EVEN_KV: tl.constexpr, P_SHIFT: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        q_block = tl.make_block_ptr(
            Q + b * sqb + h * sqh,
            (N_Q, HEAD_DIM),
            (sqn, 1),
            (start_m * BLOCK_M, 0),
            (BLOCK_M, HEAD_DIM),
            (1, 0),
        )
        k_block = tl.make_block_ptr(
            K + b * skb + h * skh, (HEAD_DIM, N_KV), (1, skn), (0, 0), (HEAD_DIM, BLOCK_N), (0, 1)
        )
        if IS_FP8:  # V^T in memory: the sequence axis is contiguous, as FP8 wgmma wants its B operand
            v_block = tl.make_block_ptr(
                V + b * svb + h * svh, (N_KV, HEAD_DIM), (1, svd), (0, 0), (BLOCK_N, HEAD_DIM), (0, 1)
            )
        else:
            v_block = tl.make_block_ptr(
                V + b * svb + h * svh, (N_KV, HEAD_DIM), (svn, 1), (0, 0), (BLOCK_N, HEAD_DIM), (1, 0)
            )
        qk_scale = sm_scale_log2
        if IS_FP8:
            qk_scale = qk_scale * tl.load(QS + bh) * tl.load(KS + bh)
        q = tl.load(q_block, boundary_check=(0,))
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        offs_n = tl.arange(0, BLOCK_N)
        for start_n in range(0, N_KV, BLOCK_N):
            if EVEN_KV:
                k = tl.load(k_block)
            else:
                k = tl.load(k_block, boundary_check=(1,), padding_option="zero")
            qk = tl.dot(q, k)
            if not EVEN_KV:
                qk = tl.where((start_n + offs_n)[None, :] < N_KV, qk, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            if IS_FP8:
                p = tl.math.exp2(qk * qk_scale - (m_ij - P_SHIFT)[:, None])
            else:
                p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if EVEN_KV:
                v = tl.load(v_block)
            else:
                v = tl.load(v_block, boundary_check=(0,), padding_option="zero")
            if IS_FP8:  # a fresh accumulator: Hopper's FP8 accumulation is imprecise across many blocks
                acc += tl.dot(p.to(v.dtype), v)
            else:
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_ij
            k_block = tl.advance(k_block, (0, BLOCK_N))
            v_block = tl.advance(v_block, (BLOCK_N, 0))
        acc = acc / l_i[:, None]
        if IS_FP8:
            acc = acc * tl.load(VS + bh * HEAD_DIM + tl.arange(0, HEAD_DIM))[None, :]
        o_block = tl.make_block_ptr(
            Out + b * sob + h * soh,
            (N_Q, HEAD_DIM),
            (son, 1),
            (start_m * BLOCK_M, 0),
            (BLOCK_M, HEAD_DIM),
            (1, 0),
        )
        tl.store(o_block, acc.to(Out.dtype.element_ty), boundary_check=(0,))

    return attention_kernel


def _launch(q, k, v, q_scale, k_scale, v_scale, out_dtype: torch.dtype) -> torch.Tensor:
    """Run the kernel on (B, H, N, D) views; returns (B, H, N, D) laid out as (B, N, H, D) in memory."""
    global _kernel
    import triton

    if _kernel is None:
        _kernel = _build_kernel()
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    is_fp8 = q.dtype == E4M3
    q, k = (x if x.stride(3) == 1 else x.contiguous() for x in (q, k))
    if is_fp8 and v.stride(2) != 1:
        v = v.transpose(2, 3).contiguous().transpose(2, 3)
    elif not is_fp8 and v.stride(3) != 1:
        v = v.contiguous()
    out = torch.empty(batch, n_q, heads, head_dim, device=q.device, dtype=out_dtype).transpose(1, 2)
    if not is_fp8:  # the scale pointers are unused; any tensor will do
        q_scale = k_scale = v_scale = q
    grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    _kernel[grid](
        q, k, v, out, q_scale, k_scale, v_scale, LOG2_E / math.sqrt(head_dim),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3), out.stride(0), out.stride(1), out.stride(2),
        heads, n_q, n_kv,
        HEAD_DIM=head_dim, IS_FP8=is_fp8, EVEN_KV=n_kv % 128 == 0, P_SHIFT=P_SCALE_LOG2,
    )  # fmt: skip
    return out


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 copy of a (B, H, N, D) tensor (same memory layout) and its float32 scale per (B, H)."""
    scale = x.abs().amax(dim=(2, 3), keepdim=True).float().clamp(min=1e-6) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale.flatten(2).flatten(1)


def quantize_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """E4M3 copies of (B, H, N, D) q, k, v with their float32 scales: q and k per head, v per channel.

    V comes back as a (B, H, N, D) view of a (B, H, D, N) tensor (sequence axis contiguous).
    """

    def scale_of(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return x.abs().amax(dim=dims, keepdim=True).float().clamp(min=1e-6) / E4M3_MAX

    q_scale, k_scale, v_scale = scale_of(query, (2, 3)), scale_of(key, (2, 3)), scale_of(value, (2,))
    q8 = (query.float() / q_scale).to(E4M3)
    k8 = (key.float() / k_scale).to(E4M3)
    v8 = (value.float() / v_scale).to(E4M3).transpose(2, 3).contiguous().transpose(2, 3)
    return q8, k8, v8, q_scale.flatten(), k_scale.flatten(), v_scale.flatten()


@torch.library.custom_op("cosmos::fp8_attention", mutates_args=())
def _fp8_attention_op(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> torch.Tensor:
    return _launch(q8, k8, v8, q_scale, k_scale, v_scale, torch.bfloat16)


@_fp8_attention_op.register_fake
def _(q8, k8, v8, q_scale, k_scale, v_scale):
    batch, heads, n_q, head_dim = q8.shape
    return q8.new_empty(batch, n_q, heads, head_dim, dtype=torch.bfloat16).transpose(1, 2)


@torch.library.custom_op("cosmos::triton_attention", mutates_args=())
def _triton_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return _launch(query, key, value, None, None, None, query.dtype)


@_triton_attention_op.register_fake
def _(query, key, value):
    batch, heads, n_q, head_dim = query.shape
    return query.new_empty(batch, n_q, heads, head_dim).transpose(1, 2)


def smooth_kv(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K and V of (B, H, N, D) centred on their mean over the tokens, and V's mean (B, H, 1, D).

    Cosmos' keys share a component across tokens several times their spread (the adaLN shift reaches
    every token), which a per-head FP8 scale resolves poorly: FlashAttention-3's FP8 kernel lost 49% of
    the output on real block inputs, 0.6% after centring. Centring is exact in real arithmetic: softmax
    ignores the per-query constant q · mean(K), and the probabilities sum to 1, so mean(V) is added back.
    """
    value_mean = value.mean(dim=2, keepdim=True)
    return key - key.mean(dim=2, keepdim=True), value - value_mean, value_mean


def fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention of (B, H, N, D) bf16 inputs with FP8 products (CUDA, Hopper); returns (B, H, N, D)."""
    return _fp8_attention_op(*quantize_attention_inputs(query, key, value))


def triton_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The same kernel in bf16 (exact up to accumulation order); measured against cuDNN and FlashAttention."""
    return _triton_attention_op(query, key, value)


def fp8_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """What `fp8_attention` computes, in plain PyTorch (any device): the quantisation error, not the speed."""
    q8, k8, v8, q_scale, k_scale, v_scale = quantize_attention_inputs(query, key, value)
    batch, heads = query.shape[:2]
    q = q8.float() * q_scale.view(batch, heads, 1, 1)
    k = k8.float() * k_scale.view(batch, heads, 1, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(query.shape[-1])
    p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    denominator = p.sum(dim=-1, keepdim=True)
    p8 = (p * 2**P_SCALE_LOG2).to(E4M3).float() / 2**P_SCALE_LOG2
    out = (p8 @ v8.float()) / denominator * v_scale.view(batch, heads, 1, -1)
    return out.to(query.dtype)


class FP8Linear(nn.Module):
    """A drop-in for `nn.Linear` (no grad) that multiplies in e4m3 through `torch._scaled_mm`.

    The weight is quantised once, per output channel; activations per token, on every call. The
    original layer is kept (on the CPU) so the swap can be undone.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", (weight.float() / scale).to(E4M3))
        self.register_buffer("weight_scale", scale.t().contiguous())
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )
        self.original = [linear.to("cpu")]  # a list, so it is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
        out = torch._scaled_mm(
            (rows.float() / scale).to(E4M3),
            self.weight_fp8.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=x.dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def restore(self) -> nn.Linear:
        """The original layer, back on this layer's device."""
        return self.original[0].to(self.weight_fp8.device)


def fp8_linear_supported(linear: nn.Linear) -> bool:
    """`torch._scaled_mm` needs both matrix sizes to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0
