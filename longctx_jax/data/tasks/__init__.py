"""Retrieval tasks small models can learn: MQAR, NIAH, passkey, variable tracking (byte level).

    example = make_mqar_example(seed=0, length=64, num_pairs=4, index=7)
    example = make_niah_example(0, 1024, 0.5, variant="multikey", haystack="stdlib",
                                distractor_similarity=0.8)
    example = make_variable_tracking_example(0, 1024, num_chains=2, num_hops=4)
    example = make_passkey_example(0, 1024, 0.5).as_task_example()

Every generator is deterministic in its arguments (seed, index, ...) and returns a `TaskExample`:
int32 `tokens`, a bool `answer_mask` marking the answer tokens themselves (the targets: the model
predicts tokens[t] at position t - 1; `loss_weights()` shifts the mask onto those positions),
`answer_spans` and task `metadata`. Impossible parameters raise ValueError naming the parameter.
"""

from longctx_jax.data.tasks.example import TaskExample
from longctx_jax.data.tasks.mqar import make_mqar_example
from longctx_jax.data.tasks.niah import HAYSTACKS, NIAH_VARIANTS, make_niah_example
from longctx_jax.data.tasks.passkey import (
    PasskeyExample,
    make_passkey_example,
    passkey_dataset,
    score,
)
from longctx_jax.data.tasks.variable_tracking import make_variable_tracking_example

__all__ = [
    "HAYSTACKS",
    "NIAH_VARIANTS",
    "PasskeyExample",
    "TaskExample",
    "make_mqar_example",
    "make_niah_example",
    "make_passkey_example",
    "make_variable_tracking_example",
    "passkey_dataset",
    "score",
]
