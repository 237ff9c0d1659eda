"""Loading the repository's config files (configs/*.py) by path, as `longctx --config` does."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]


def load_config_file(relative, *args):
    """`get_config(*args)` of the config file at ROOT / relative."""
    spec = importlib.util.spec_from_file_location("config_under_test", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
