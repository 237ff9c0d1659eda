"""`CacheSpec`: what a KV cache keeps (its policy and budget) and how it stores it (bits).

Policies (which tokens stay once `capacity` slots are full; all keep the newest tokens of a step):
  full    nothing is evicted; a prompt plus new tokens longer than the capacity is an error.
  window  the latest `capacity` tokens, a ring buffer (Mistral / Longformer sliding window).
  sinks   the first `sinks` tokens plus the latest capacity - sinks (StreamingLLM). Attention uses
          positions *within the cache* (the first tokens are re-rotated next to the window), so
          a stream longer than the trained length stays in the trained range.
  h2o     heavy hitters: the tokens with the most accumulated attention, plus the `recent`
          latest (Zhang et al. 2023).
  tova    the tokens the latest query attends to most, averaged over heads (Oren et al. 2024).
  knorm   the keys with the smallest L2 norm (Devoto et al. 2024; query-agnostic).
  snapkv  at prefill, the tokens the last `recent` prompt queries attend to most, max-pooled over
          `pool` neighbours (Li et al. 2024); the observation window itself is kept; decode
          appends and, once full, evicts the lowest prefill score.
Scored policies share one selection per row over the key/value heads (kvpress scores per head);
on equal scores the newer token stays.

Storage: `bits` None keeps keys and values in `dtype` (default: the model's); 8, 4 or 2 stores
group-quantised codes (inference/quantize.py):
  key_quant "token"    keys and values per token (symmetric absmax over groups of `group_size`
                       channels, default the whole head: MaxText's int8 cache); any policy.
  key_quant "channel"  KIVI: keys per channel over groups of `group_size` tokens (default 32),
                       values per token, both asymmetric, the latest `residual` tokens in full
                       precision (KIVI keeps 32-128); policy "full" only.

`kernel` True runs each single-token decode step through the split-K Pallas kernel
(pallas_kernels/decode_attention: TPU / GPU, a jnp path elsewhere), which reads int8 / int4 codes
and dequantises on chip. It writes the new token before attending, so that token's key and value
are read back quantised (the default path attends with them in full precision, then stores them).
Policies "full" and "window", float or per-token codes of 8 or 4 bits over the whole head,
softmax attention (not DSA's sparse stage).
"""

from __future__ import annotations

import dataclasses

from longctx_jax import checks
from longctx_jax.inference.quantize import BITS, Quantized, quantize

POLICIES = ("full", "window", "sinks", "h2o", "tova", "knorm", "snapkv")
SCORED = ("h2o", "tova", "knorm", "snapkv")
KEY_QUANT = ("token", "channel")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """A KV cache's policy, size and storage (module docstring); frozen and hashable."""

    capacity: int | None = None  # slots per row; None = the whole sequence (prompt + new tokens)
    policy: str = "full"
    sinks: int = 4
    recent: int = 0
    pool: int = 7
    bits: int | None = None
    key_quant: str = "token"
    group_size: int | None = None
    residual: int = 0
    dtype: str | None = None
    kernel: bool = False

    def validate(self) -> CacheSpec:
        """ValueError naming the field (`cache.<field>=...: expected ...`); returns self."""
        if self.capacity is not None:
            checks.check_positive_int("cache", "capacity", self.capacity)
        checks.check_choice("cache", "policy", self.policy, POLICIES)
        checks.check_int("cache", "sinks", self.sinks, minimum=0)
        checks.check_int("cache", "recent", self.recent, minimum=0)
        checks.check_positive_int("cache", "pool", self.pool)
        if self.bits is not None and (checks.is_int(self.bits) is False or self.bits not in BITS):
            checks.fail("cache", "bits", self.bits, f"None or one of {BITS}")
        checks.check_choice("cache", "key_quant", self.key_quant, KEY_QUANT)
        if self.group_size is not None:
            checks.check_positive_int("cache", "group_size", self.group_size)
        checks.check_int("cache", "residual", self.residual, minimum=0)
        if self.dtype is not None:
            checks.check_choice("cache", "dtype", self.dtype, FLOAT_DTYPES)
        if self.capacity is not None:
            if self.policy == "sinks" and self.capacity <= self.sinks:
                checks.fail(
                    "cache",
                    "capacity",
                    self.capacity,
                    f"more than sinks={self.sinks} slots (policy 'sinks' keeps the first "
                    "`sinks` tokens and a window after them)",
                )
            if self.policy in ("h2o", "snapkv") and self.capacity <= self.recent:
                checks.fail(
                    "cache",
                    "capacity",
                    self.capacity,
                    f"more than recent={self.recent} slots (policy {self.policy!r} always keeps "
                    "the `recent` latest tokens)",
                )
        checks.check_bool("cache", "kernel", self.kernel)
        if self.kernel:
            if self.policy not in ("full", "window"):
                checks.fail("cache", "policy", self.policy, "'full' or 'window' with kernel=True")
            if self.bits not in (None, 4, 8) or self.kivi or self.group_size is not None:
                checks.fail(
                    "cache",
                    "bits",
                    self.bits,
                    "None, 8 or 4 per token over the whole head (key_quant='token', "
                    "group_size=None, residual=0) with kernel=True",
                )
        if self.kivi:
            if self.bits is None:
                checks.fail(
                    "cache", "bits", None, "2, 4 or 8 with key_quant='channel' or residual > 0"
                )
            if self.policy != "full":
                checks.fail(
                    "cache",
                    "policy",
                    self.policy,
                    "'full' with key_quant='channel' or residual > 0 (KIVI groups keys along "
                    "tokens, which evicting single tokens would break)",
                )
            if self.residual % self.token_group:
                checks.fail(
                    "cache",
                    "residual",
                    self.residual,
                    f"a multiple of the token group {self.token_group} (KIVI quantises whole "
                    "groups once they leave the full-precision window)",
                )
        return self

    @property
    def kivi(self) -> bool:
        """KIVI layout: per-channel keys and/or a full-precision residual window."""
        return self.key_quant == "channel" or self.residual > 0

    def channel_group(self, head_dim: int) -> int:
        """Channels per quantisation group of a per-token code (values; keys unless KIVI)."""
        return head_dim if self.group_size is None else self.group_size

    def token_codes(self, x) -> Quantized:
        """x [..., head_dim] quantised per token over groups of `channel_group` channels:
        symmetric absmax at 8 bits, min-max below (values always; keys unless KIVI)."""
        group = self.channel_group(x.shape[-1])
        return quantize(x, self.bits, axis=-1, group_size=group, symmetric=self.bits == 8)

    @property
    def token_group(self) -> int:
        """Tokens per quantisation group along the sequence (KIVI's keys); 1 when per token."""
        if self.key_quant == "channel":
            return 32 if self.group_size is None else self.group_size
        return 1


def check_spec_for_model(spec: CacheSpec, model_config, capacity: int) -> None:
    """ValueError for a spec this model cannot use (before anything is compiled)."""
    kind = model_config.attention.kind
    if kind == "linear" and (spec.policy != "full" or spec.bits is not None):
        checks.fail(
            "cache",
            "policy" if spec.policy != "full" else "bits",
            spec.policy if spec.policy != "full" else spec.bits,
            "'full' / None with model.attention.kind='linear' (the mixer keeps a fixed-size "
            "state, not a KV cache)",
        )
    if kind == "sparse_topk":
        sparse = model_config.attention.sparse
        if spec.kernel and sparse.stage == "sparse":
            checks.fail(
                "cache", "kernel", True, "False with attention.sparse.stage='sparse' (top-k)"
            )
        if sparse.stage == "sparse" and sparse.granularity != "token":
            raise ValueError(
                "model.attention.sparse.granularity='block': decoding needs granularity "
                "'token' (a block's keys are chosen by its first query, which a decode step "
                "does not have)"
            )
        if spec.policy == "sinks":
            checks.fail("cache", "policy", "sinks", "not 'sinks' with attention.kind='sparse_topk'")
    h = model_config.head_dim
    if spec.bits is not None:
        group = spec.channel_group(h)
        if h % group or h % (8 // spec.bits):
            checks.fail(
                "cache",
                "group_size",
                spec.group_size,
                f"a divisor of head_dim={h} (and head_dim a multiple of {8 // spec.bits}: "
                f"{spec.bits}-bit codes pack {8 // spec.bits} to a byte)",
            )
        if spec.kivi and capacity % spec.token_group:
            checks.fail(
                "cache",
                "capacity",
                capacity,
                f"a multiple of the token group {spec.token_group} (KIVI)",
            )
