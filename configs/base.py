"""Base config: every section with its defaults (see longctx_jax/config.py).

longctx train --config configs/base.py --workdir runs/base
"""

from longctx_jax.config import base_config


def get_config():
    return base_config()
