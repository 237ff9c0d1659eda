"""The tiny model config shared by the model and eval tests (importable: tests/ is on sys.path)."""

from longctx_jax.model import default_model_config


def tiny_model_config(overrides: dict | None = None, **more):
    """A 2-layer, 32-wide GQA model (4 query heads, 2 KV heads); overrides use dotted names.

    Attention is `reference` (the quickest to compile; tests about implementations set
    attention.impl), and init_std is large (0.3) so attention is far from uniform and positions
    visibly change the logits.
    """
    cfg = default_model_config()
    cfg.update_from_flattened_dict(
        {
            "num_layers": 2,
            "embed_dim": 32,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 8,
            "mlp_dim": 64,
            "init_std": 0.3,
            "attention.impl": "reference",
            **(overrides or {}),
            **more,
        }
    )
    return cfg
