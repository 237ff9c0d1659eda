"""Training on retrieval tasks: task rows, their config (`data.task`), and their grain dataset.

A *task row* is one task example of exactly `data.seq_len` tokens, in the row format of
`longctx_jax.data.packing` (one document per row):

  tokens       int32  the example's tokens, then 0 (padding) if the generator made fewer than
                      seq_len (NIAH, passkey and variable tracking fill whole haystack units, so
                      they can end up to one unit short; MQAR is always exactly seq_len).
  targets      int32  the next target token (`target_tokens()[1:]`: the next token, or MQAR's
                      value label), 0 at the last token and on padding.
  weights      float32 `TaskExample.loss_weights()`: 1 exactly where the next token is an answer
                      token, 0 elsewhere (the rest of the example is context, not supervised).
  segment_ids  int32  1 on the example, 0 on padding.
  positions    int32  0 .. n-1 on the example, 0 on padding.

The config section `data.task` (defaults in `default_task_config`):

  kind       "none" (LM text only: the pipeline is exactly the one without tasks) | "mqar" |
             "niah" | "passkey" | "variable_tracking".
  fraction   share of train rows that are task rows, in [0, 1] (1: task rows only, no document is
             read; 0: LM rows only). Rows, not tokens, are mixed, by grain's deterministic
             interleaving (`IterDataset.mix`), whose integer proportions put the share of task
             rows within 0.0025 of `fraction` over any long stretch. Ignored when kind="none".
  mqar       `make_mqar_example` keywords: num_pairs (a tuple of pair counts; each example draws
             one uniformly, zoology's mixture over #pairs; an int is accepted too), num_queries
             (None: every key), vocab_size, key_range, value_range (None: zoology's halves),
             power_a, noise.
  niah       `make_niah_example` keywords: depths (a tuple of target-needle depths, each example
             draws one uniformly; () : depth uniform in [0, 1]), variant, haystack, num_keys,
             num_values, num_queries (None: the variant's), distractor_similarity, key_length,
             value_digits.
  passkey    `make_passkey_example` keywords: depths (as niah's), digits.
  variable_tracking  `make_variable_tracking_example` keywords: num_chains, num_hops, haystack,
             name_length, value_digits.
  filler     `make_filler_example` keywords (MQAR with irrelevant filler, `tasks/filler.py`):
             layout, depths (as niah's; used by layout "depth"), num_pairs (one int),
             example_len, key_range, value_range, filler_range.

Only the section of the chosen kind is used and validated; examples are made with length=seq_len.
In a config file the tuple fields take tuples (`num_pairs = (8,)`); on the command line
`--config.data.task.mqar.num_pairs=8` and `=4,8,16` parse to tuples.

Determinism and evaluation: task row i (its example index) is a function of (data.seed, i) and
the task config alone. Its generator seed is `train_task_seed(data.seed)`, derived by hashing
(data.seed, "train-task") into [2**62, 2**63): not a seed evaluators use (they take small seeds
such as 0), and the generators' random streams are keyed by the seed, so training draws its
examples from a stream of its own, distinct from every evaluation's. The per-example choices
(#pairs, depth) come from a separate stream of the same seed. Under process_sharding="source",
process p of P makes examples p, p + P, p + 2P, ... (distinct per process); under "batch" every
process makes the global stream 0, 1, 2, ... and keeps its rows of each batch.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping

import grain
import ml_collections
import numpy as np
from ml_collections import config_dict

from longctx_jax import checks
from longctx_jax.data.tasks import (
    HAYSTACKS,
    NIAH_VARIANTS,
    TaskExample,
    make_mqar_example,
    make_niah_example,
    make_passkey_example,
    make_variable_tracking_example,
)
from longctx_jax.data.tasks.filler import make_filler_example
from longctx_jax.data.tasks.mqar import NOISE_KINDS
from longctx_jax.data.vocab import VOCAB_SIZE

TASK_KINDS = ("none", "mqar", "niah", "passkey", "variable_tracking", "filler")
_TRAIN_STREAM = zlib.crc32(b"train-task")  # the generator seed's stream
_CHOICE_STREAM = zlib.crc32(b"train-task-choices")  # per-example #pairs / depth draws
_SEED_FLOOR = 1 << 62  # train seeds are in [2**62, 2**63)
_STOP = 1 << 62  # example indices are below this (an endless stream in practice)


def default_task_config() -> ml_collections.ConfigDict:
    """`data.task` at its defaults: no task (kind="none"); every generator's keywords."""
    return ml_collections.ConfigDict(
        {
            "kind": "none",
            "fraction": 0.5,
            "mqar": {
                "num_pairs": (4, 8, 16),
                "num_queries": config_dict.placeholder(int),
                "vocab_size": VOCAB_SIZE,
                "key_range": config_dict.placeholder(tuple),
                "value_range": config_dict.placeholder(tuple),
                "power_a": 0.01,
                "noise": "random",
            },
            "niah": {
                "depths": (),
                "variant": "single",
                "haystack": "noise",
                "num_keys": config_dict.placeholder(int),
                "num_values": config_dict.placeholder(int),
                "num_queries": config_dict.placeholder(int),
                "distractor_similarity": 0.0,
                "key_length": 6,
                "value_digits": 7,
            },
            "passkey": {"depths": (), "digits": 5},
            "variable_tracking": {
                "num_chains": 1,
                "num_hops": 4,
                "haystack": "noise",
                "name_length": 5,
                "value_digits": 5,
            },
            "filler": {
                "layout": "depth",
                "depths": (),
                "num_pairs": 4,
                "example_len": 32,
                "key_range": (1, 17),
                "value_range": (128, 144),
                "filler_range": (17, 128),
            },
        }
    )


def train_task_seed(data_seed) -> int:
    """The generator seed of training task examples for `data.seed` (see the module docstring)."""
    state = np.random.SeedSequence([int(data_seed), _TRAIN_STREAM]).generate_state(1, np.uint64)
    return _SEED_FLOOR | (int(state[0]) & (_SEED_FLOOR - 1))


# ------------------------------------------------------------------------------------ validation


def _is_sequence(value) -> bool:
    return isinstance(value, tuple | list)


def _check_choices(field, value, *, kind, minimum=None):
    """A non-empty tuple of integers >= minimum (an int is one choice) -> a tuple of ints."""
    choices = (value,) if checks.is_int(value) else value
    if (
        not _is_sequence(choices)
        or not choices
        or not all(checks.is_int(v) and v >= minimum for v in choices)
    ):
        checks.fail(
            "data", f"task.{kind}.{field}", value, f"a non-empty tuple of integers >= {minimum}"
        )
    return tuple(int(v) for v in choices)


def _check_depths(value, *, kind):
    """A tuple of numbers in [0, 1] (empty: uniform in [0, 1]) -> a tuple of floats."""
    if not _is_sequence(value) or not all(checks.is_real(v) and 0.0 <= v <= 1.0 for v in value):
        checks.fail(
            "data",
            f"task.{kind}.depths",
            value,
            "a tuple of numbers in [0, 1] (empty: each example's depth uniform in [0, 1])",
        )
    return tuple(float(v) for v in value)


def _check_optional_range(value, *, kind, field):
    if value is not None and not _is_sequence(value):
        checks.fail("data", f"task.{kind}.{field}", value, "None or a (lo, hi) pair of integers")
    return None if value is None else tuple(value)


def _check_section(task, kind):
    reference = default_task_config()[kind]
    section = task[kind]
    if not isinstance(section, Mapping | ml_collections.ConfigDict):
        checks.fail("data", f"task.{kind}", section, f"a section with fields {sorted(reference)}")
    unknown = sorted(set(section) - set(reference))
    missing = sorted(set(reference) - set(section))
    if unknown or missing:
        checks.fail(
            "data",
            f"task.{kind}",
            dict(section),
            f"exactly the fields {sorted(reference)} (unknown {unknown}, missing {missing})",
        )
    return section


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A validated `data.task` as plain values: what a worker needs to make task rows.

    `keywords` are the generator's fixed keyword arguments; `num_pairs` (MQAR) and `depths`
    (NIAH, passkey) are the per-example choices (empty depths: uniform in [0, 1]).
    """

    kind: str
    seq_len: int
    keywords: tuple[tuple[str, object], ...]
    num_pairs: tuple[int, ...] = ()
    depths: tuple[float, ...] = ()


def task_spec(task, seq_len) -> TaskSpec:
    """The TaskSpec of a `data.task` section for rows of `seq_len` tokens; raises ValueError
    naming the field (`data.task.mqar.num_pairs=...: expected ...`), including generator
    parameters that are impossible at this seq_len (one example of each choice is generated)."""
    kind = task.kind
    if kind == "none":
        raise ValueError("data.task.kind='none': no task rows to make")
    section = _check_section(task, kind)
    drawn = ("depths",) if kind == "filler" else ("num_pairs", "depths")  # per example
    keywords = {k: section[k] for k in section if k not in drawn}
    num_pairs, depths = (), ()
    if kind == "filler":
        for field in ("key_range", "value_range", "filler_range"):
            keywords[field] = tuple(section[field])
    if kind == "mqar":
        num_pairs = _check_choices("num_pairs", section.num_pairs, kind=kind, minimum=1)
        for field in ("key_range", "value_range"):
            keywords[field] = _check_optional_range(section[field], kind=kind, field=field)
        checks.check_choice("data", "task.mqar.noise", section.noise, NOISE_KINDS)
    elif kind in ("niah", "passkey", "filler"):
        depths = _check_depths(section.depths, kind=kind)
    if kind == "niah":
        checks.check_choice("data", "task.niah.variant", section.variant, tuple(NIAH_VARIANTS))
    if kind in ("niah", "variable_tracking"):
        checks.check_choice("data", f"task.{kind}.haystack", section.haystack, HAYSTACKS)
    spec = TaskSpec(
        kind=kind,
        seq_len=seq_len,
        keywords=tuple(sorted(keywords.items())),
        num_pairs=num_pairs,
        depths=depths,
    )
    # Every fixed choice once: the generators' own checks (ValueError "name=value: expected ...").
    for choice in num_pairs or (None,):
        try:
            example = _generate(spec, seed=0, index=0, num_pairs=choice, depth=0.0)
        except ValueError as error:
            message = str(error)
            what = f"data.task.{kind}" + (f" with num_pairs={choice}" if choice else "")
            if message.startswith("length="):
                raise ValueError(
                    f"data.seq_len={seq_len!r}: expected a length that fits {what}: {message}"
                ) from None
            if choice is not None and message.startswith("num_pairs="):
                raise ValueError(
                    f"data.task.mqar.num_pairs={section.num_pairs!r}: {message}"
                ) from None
            context = f" (with num_pairs={choice})" if choice is not None else ""
            raise ValueError(f"data.task.{kind}.{message}{context}") from None
        if len(example.tokens) > seq_len:  # a generator contract; never expected
            raise ValueError(
                f"data.task.kind={kind!r}: made {len(example.tokens)} tokens, more than "
                f"data.seq_len={seq_len}"
            )
    return spec


def validate_task_config(task, seq_len) -> None:
    """Raises ValueError naming the field unless `data.task` is valid for rows of `seq_len`."""
    if not isinstance(task, Mapping | ml_collections.ConfigDict):
        checks.fail("data", "task", task, "a section (ConfigDict); see default_task_config()")
    missing = sorted(set(default_task_config()) - set(task))
    if missing:
        checks.fail(
            "data", "task", dict(task), f"every field of default_task_config(), missing {missing}"
        )
    checks.check_choice("data", "task.kind", task.kind, TASK_KINDS)
    checks.check_real("data", "task.fraction", task.fraction, minimum=0, maximum=1)
    if task.kind != "none":
        task_spec(task, seq_len)


# ------------------------------------------------------------------------------------ rows


def _generate(spec: TaskSpec, *, seed, index, num_pairs=None, depth=None) -> TaskExample:
    keywords = dict(spec.keywords)
    length = spec.seq_len
    if spec.kind == "mqar":
        return make_mqar_example(seed, length, num_pairs, index=index, **keywords)
    if spec.kind == "niah":
        return make_niah_example(seed, length, depth, index=index, **keywords)
    if spec.kind == "passkey":
        return make_passkey_example(seed, length, depth, index=index, **keywords).as_task_example()
    if spec.kind == "filler":
        return make_filler_example(seed, length, index=index, depth=depth, **keywords)
    return make_variable_tracking_example(seed, length, index=index, **keywords)


def make_task_example(spec: TaskSpec, data_seed, index) -> TaskExample:
    """Training task example `index` for `data.seed` (see the module docstring)."""
    seed = train_task_seed(data_seed)
    choices = np.random.default_rng([seed, _CHOICE_STREAM, int(index)])
    num_pairs = int(choices.choice(spec.num_pairs)) if spec.num_pairs else None
    if spec.depths:
        depth = float(choices.choice(spec.depths))
    else:
        depth = float(choices.uniform(0.0, 1.0))
    return _generate(spec, seed=seed, index=int(index), num_pairs=num_pairs, depth=depth)


def task_row(example: TaskExample, seq_len) -> dict[str, np.ndarray]:
    """The row (packing's format) of one example of at most seq_len tokens, padded after it."""
    n = len(example.tokens)
    if n > seq_len:
        raise ValueError(f"example of {n} tokens: expected at most seq_len={seq_len}")
    tokens = np.zeros(seq_len, np.int32)
    tokens[:n] = example.tokens
    targets = np.zeros(seq_len, np.int32)
    targets[: n - 1] = example.target_tokens()[1:]
    weights = np.zeros(seq_len, np.float32)
    weights[:n] = example.loss_weights()
    segment_ids = np.zeros(seq_len, np.int32)
    segment_ids[:n] = 1
    positions = np.zeros(seq_len, np.int32)
    positions[:n] = np.arange(n, dtype=np.int32)
    return {
        "tokens": tokens,
        "targets": targets,
        "weights": weights,
        "segment_ids": segment_ids,
        "positions": positions,
    }


@dataclasses.dataclass(frozen=True)
class _MakeTaskRow:
    """index -> task row (a picklable callable for grain)."""

    spec: TaskSpec
    data_seed: int

    def __call__(self, index):
        example = make_task_example(self.spec, self.data_seed, index)
        return task_row(example, self.spec.seq_len)


def task_row_dataset(config, *, start=0, step=1) -> grain.MapDataset:
    """grain MapDataset of the task rows of example indices start, start + step, ... (endless in
    practice: 2**62 indices) for the data config `config` (its `task`, `seq_len`, `seed`)."""
    spec = task_spec(config.task, config.seq_len)
    make_row = _MakeTaskRow(spec=spec, data_seed=int(config.seed))
    return grain.MapDataset.range(start, _STOP, step).map(make_row)
