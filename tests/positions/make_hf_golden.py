"""Write tests/positions/hf_golden.json: RoPE inverse frequencies computed by Hugging Face itself.

Not part of the test run (it needs torch and transformers, which the project does not install):
  python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch==2.13.0 transformers==5.24.0
  /tmp/hfenv/bin/python tests/positions/make_hf_golden.py tests/positions/hf_golden.json
"""

import json
import sys

import torch
import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding


def factor_list(n, scale, power):
    """A fixed, smooth, Phi-3-like per-frequency factor list: 1 at i=0 rising to 1+scale."""
    return [round(1.0 + scale * (i / (n - 1)) ** power, 6) for i in range(n)]


CASES = [
    # name, kind, head_dim, base, max_position_embeddings, seq_len, rope_parameters (HF names)
    ("default_d128_base1e4", "default", 128, 10000.0, 4096, None, {}),
    ("default_d64_base5e5", "default", 64, 500000.0, 8192, None, {}),
    ("default_partial_half", "default", 128, 10000.0, 4096, None, {"partial_rotary_factor": 0.5}),
    ("linear_factor4", "linear", 128, 10000.0, 4096, None, {"factor": 4.0}),
    (
        "linear_factor2_partial",
        "linear",
        64,
        10000.0,
        2048,
        None,
        {"factor": 2.0, "partial_rotary_factor": 0.25},
    ),
    ("dynamic_seq_none", "dynamic", 128, 10000.0, 4096, None, {"factor": 2.0}),
    ("dynamic_below_max", "dynamic", 128, 10000.0, 4096, 2048, {"factor": 2.0}),
    # factor*seq_len/max - (factor-1) = 2*6144/4096 - 1 = 2: the static-NTK base for factor 2.
    ("dynamic_above_max_ntk2", "dynamic", 128, 10000.0, 4096, 6144, {"factor": 2.0}),
    ("dynamic_far_above_max", "dynamic", 64, 500000.0, 8192, 65536, {"factor": 4.0}),
    (
        "yarn_factor4",
        "yarn",
        128,
        10000.0,
        16384,
        None,
        {"factor": 4.0, "original_max_position_embeddings": 4096},
    ),
    # DeepSeek-V3: qk_rope_head_dim 64, factor 40, mscale = mscale_all_dim = 1.
    (
        "yarn_deepseek_v3",
        "yarn",
        64,
        10000.0,
        163840,
        None,
        {
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    ),
    (
        "yarn_mscale_ratio",
        "yarn",
        64,
        10000.0,
        65536,
        None,
        {
            "factor": 16.0,
            "original_max_position_embeddings": 4096,
            "mscale": 1.0,
            "mscale_all_dim": 0.707,
        },
    ),
    # gpt-oss style: no truncation of the correction range.
    (
        "yarn_gpt_oss_no_truncate",
        "yarn",
        64,
        150000.0,
        131072,
        None,
        {
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
        },
    ),
    (
        "yarn_factor_from_max_pos",
        "yarn",
        128,
        1000000.0,
        32768,
        None,
        {"factor": None, "original_max_position_embeddings": 8192},
    ),
    (
        "yarn_partial_explicit_attention_factor",
        "yarn",
        128,
        10000.0,
        32768,
        None,
        {
            "factor": 8.0,
            "original_max_position_embeddings": 4096,
            "attention_factor": 1.25,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "partial_rotary_factor": 0.5,
        },
    ),
    # Llama-3.1 and Llama-3.2 rope_scaling.
    (
        "llama3_1_8b",
        "llama3",
        128,
        500000.0,
        131072,
        None,
        {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    (
        "llama3_2_1b",
        "llama3",
        64,
        500000.0,
        131072,
        None,
        {
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    # Phi-3-style longrope (head_dim 96, original 4096, max 131072), own factor lists.
    (
        "longrope_short",
        "longrope",
        96,
        10000.0,
        131072,
        None,
        {
            "original_max_position_embeddings": 4096,
            "short_factor": factor_list(48, 0.05, 1.0),
            "long_factor": factor_list(48, 40.0, 2.0),
        },
    ),
    (
        "longrope_at_original",
        "longrope",
        96,
        10000.0,
        131072,
        4096,
        {
            "original_max_position_embeddings": 4096,
            "short_factor": factor_list(48, 0.05, 1.0),
            "long_factor": factor_list(48, 40.0, 2.0),
        },
    ),
    (
        "longrope_long",
        "longrope",
        96,
        10000.0,
        131072,
        8192,
        {
            "original_max_position_embeddings": 4096,
            "short_factor": factor_list(48, 0.05, 1.0),
            "long_factor": factor_list(48, 40.0, 2.0),
        },
    ),
    # Phi-4-mini style: partial rotary 0.75 of head_dim 128, explicit factor and attention_factor.
    (
        "longrope_partial_explicit",
        "longrope",
        128,
        10000.0,
        131072,
        100000,
        {
            "original_max_position_embeddings": 4096,
            "partial_rotary_factor": 0.75,
            "factor": 16.0,
            "attention_factor": 1.1,
            "short_factor": factor_list(48, 0.1, 1.5),
            "long_factor": factor_list(48, 20.0, 3.0),
        },
    ),
]


def run_case(name, kind, head_dim, base, max_pos, seq_len, params):
    rope_parameters = {"rope_type": kind, "rope_theta": base, **params}
    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rope_parameters),
    )
    if kind == "default":
        # Llama's default ignores partial_rotary_factor; GPT-NeoX's honours it.
        fn = GPTNeoXRotaryEmbedding.compute_default_rope_parameters
        fn_name = "GPTNeoXRotaryEmbedding.compute_default_rope_parameters"
    else:
        fn = ROPE_INIT_FUNCTIONS[kind]
        fn_name = f"ROPE_INIT_FUNCTIONS[{kind!r}] ({fn.__name__})"
    inv_freq, attention_factor = fn(config, torch.device("cpu"), seq_len=seq_len)
    assert inv_freq.dtype == torch.float32, inv_freq.dtype
    return {
        "name": name,
        "kind": kind,
        "hf_function": fn_name,
        "head_dim": head_dim,
        "base": base,
        "max_position_embeddings": max_pos,
        "seq_len": seq_len,
        "rope_parameters": rope_parameters,
        "inv_freq": [float(v) for v in inv_freq.tolist()],
        "attention_factor": float(attention_factor),
    }


def main(out_path):
    golden = {
        "description": (
            "RoPE inverse frequencies (float32) and attention_factor computed by Hugging Face "
            "transformers' modeling_rope_utils on CPU; rope_parameters are the exact dict given as "
            "config.rope_parameters (LlamaConfig with the listed head_dim and "
            "max_position_embeddings). Generated once by a throwaway script, not by this repo."
        ),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "cases": [run_case(*case) for case in CASES],
    }
    with open(out_path, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
