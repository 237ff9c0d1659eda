"""Sampling: greedy, batch invariance, the sampled distribution and the top-k / top-p token sets.

References are independent float64 numpy: softmax(logits / T), top-k by a sorted threshold, and the
nucleus by its defining property (a token is kept iff the tokens strictly more probable than it
hold < top_p of the mass), so no sort order or cumulative sum is shared with the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from longctx_jax.inference.sampling import Sampling, filter_logits, sample

# Chi-square tail probability a correct sampler falls beyond: with fixed seeds the tests are
# deterministic; with LONGCTX_TEST_SEED=random this is the false-alarm rate per check.
CHI2_TAIL = 1e-6


def reference_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """float64 [..., V] probabilities after temperature, top-k then top-p (ties kept)."""
    x = np.asarray(logits, np.float64) / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = -np.sort(-x, axis=-1)[..., top_k - 1 : top_k]
        x = np.where(x >= kth, x, -np.inf)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1:
        probs = np.where(nucleus_keep(probs, top_p), probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return probs


def nucleus_keep(probs, top_p):
    """bool [..., V]: keep token i iff p_i > 0 and the mass of tokens with p_j > p_i is < top_p."""
    greater_mass = nucleus_margin_mass(probs)
    return (probs > 0) & (greater_mass < top_p)


def nucleus_margin_mass(probs):
    """float64 [..., V]: per token, the total probability of the strictly more probable ones."""
    more_probable = probs[..., None, :] > probs[..., :, None]  # [..., i, j]: p_j > p_i
    return (probs[..., None, :] * more_probable).sum(-1)


# Sampling is static (hashable); the seed is traced. Eager calls are checked against this below.
jit_sample = jax.jit(sample, static_argnames="sampling")


def draw(logits, sampling, *, seed, request_ids=None, positions=None):
    b = logits.shape[0]
    request_ids = np.arange(b, dtype=np.int32) if request_ids is None else request_ids
    positions = np.full(b, 7, np.int32) if positions is None else positions
    out = jit_sample(
        jnp.asarray(logits),
        seed=jnp.int32(seed % 2**31),
        request_ids=jnp.asarray(request_ids, jnp.int32),
        positions=jnp.asarray(positions, jnp.int32),
        sampling=sampling,
    )
    assert out.dtype == jnp.int32 and out.shape == (b,)
    return np.asarray(out)


# --- greedy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_greedy_is_argmax(seed, dtype):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((16, 500)).astype(np.float32)
    logits[:4] = rng.integers(0, 3, (4, 500))  # many exact ties: argmax picks the lowest id
    logits = jnp.asarray(logits, dtype)
    expected = np.asarray(jnp.argmax(logits, axis=-1))
    assert (np.asarray(logits[:4], np.float32) == 2).sum() > 4 * 2  # ties really present
    greedy_ones = [
        None,
        Sampling(temperature=0.0),
        Sampling(temperature=0, top_k=50, top_p=0.5),
        *(Sampling(temperature=t, top_k=1) for t in (0.3, 1.0, 5.0)),
        Sampling(temperature=2.0, top_k=1, top_p=0.2),
    ]
    for sampling in greedy_ones:
        np.testing.assert_array_equal(draw(logits, sampling, seed=seed), expected, str(sampling))


# --- batch invariance -----------------------------------------------------------------------------

SAMPLINGS = [
    Sampling(),
    Sampling(temperature=0.7),
    Sampling(temperature=1.3, top_k=20),
    Sampling(temperature=0.9, top_p=0.8),
    Sampling(temperature=1.0, top_k=50, top_p=0.9),
]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_batch_invariance(seed, sampling):
    """A row's token depends on (seed, request id, position, its logits) only."""
    rng = np.random.default_rng(seed)
    b, v = 10, 300
    logits = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    request_ids = rng.integers(0, 2**31 - 1, b).astype(np.int32)
    positions = rng.integers(0, 100_000, b).astype(np.int32)
    batched = draw(logits, sampling, seed=seed, request_ids=request_ids, positions=positions)

    alone = [
        draw(logits[i : i + 1], sampling, seed=seed, request_ids=request_ids[i : i + 1],
             positions=positions[i : i + 1])[0]
        for i in range(b)
    ]  # fmt: skip
    np.testing.assert_array_equal(alone, batched)

    perm = rng.permutation(b)  # other rows, other row indices
    shuffled = draw(
        logits[perm], sampling, seed=seed, request_ids=request_ids[perm], positions=positions[perm]
    )
    np.testing.assert_array_equal(shuffled, batched[perm])

    # Among unrelated requests, at other row indices (same batch size: one compilation fewer).
    others = (rng.standard_normal((5, v)) * 2).astype(np.float32)
    mixed = draw(
        np.concatenate([others[:3], logits[:5], others[3:]]),
        sampling,
        seed=seed,
        request_ids=np.concatenate([[11, 12, 13], request_ids[:5], [14, 15]]).astype(np.int32),
        positions=np.concatenate([[1, 2, 3], positions[:5], [4, 5]]).astype(np.int32),
    )
    np.testing.assert_array_equal(mixed[3:8], batched[:5])

    # The noise does depend on the counters: other positions give other tokens somewhere.
    flat = np.zeros((b, v), np.float32)  # uniform: every draw is pure noise
    tokens = draw(flat, sampling, seed=seed, request_ids=np.zeros(b, np.int32),
                  positions=np.arange(b, dtype=np.int32))  # fmt: skip
    assert len(set(tokens.tolist())) > 1


def test_eager_equals_jit(seed):
    """Eagerly with a Python int seed, as under jit with the seed traced (int32)."""
    rng = np.random.default_rng(seed)
    seed %= 2**31  # an int32, so that the Python and the traced seed name the same key
    b, v = 10, 300
    logits = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    request_ids = rng.integers(0, 2**31 - 1, b).astype(np.int32)
    positions = rng.integers(0, 100_000, b).astype(np.int32)
    sampling = SAMPLINGS[-1]
    eager = sample(logits, seed=seed, request_ids=request_ids, positions=positions,
                   sampling=sampling)  # fmt: skip
    jitted = draw(logits, sampling, seed=seed, request_ids=request_ids, positions=positions)
    np.testing.assert_array_equal(np.asarray(eager), jitted)


# --- the sampled distribution ---------------------------------------------------------------------


def chi2_check(counts, expected_probs, n):
    """Chi-square statistic over the support and its threshold; no counts outside the support."""
    support = expected_probs > 0
    assert counts[~support].sum() == 0, (counts, expected_probs)
    expected = expected_probs[support] * n
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    return stat, float(scipy.stats.chi2.isf(CHI2_TAIL, dof)) if dof else 0.0


DIST_CASES = [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(temperature=0.8, top_k=3),
    dict(temperature=1.0, top_p="nucleus of 3"),
    dict(temperature=1.5, top_k=4, top_p="nucleus of 2"),
]


@pytest.mark.parametrize(
    "case", DIST_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_distribution_matches_reference(seed, case):
    rng = np.random.default_rng(seed)
    v, n = 6, 20_000
    logits = rng.standard_normal(v).astype(np.float32) * 1.5
    temperature, top_k = case["temperature"], case.get("top_k")
    top_p = case.get("top_p")
    if top_p is not None:  # midway between two cumulative sums: the nucleus size is unambiguous
        size = int(top_p.split()[-1])
        ordered = -np.sort(-reference_probs(logits, temperature, top_k))
        top_p = float(ordered[: size - 1].sum() + ordered[size - 1] / 2)
    expected = reference_probs(logits, temperature, top_k, top_p)
    if top_k is not None:
        assert (reference_probs(logits, temperature, top_k) > 0).sum() == top_k
    if top_p is not None:
        assert (expected > 0).sum() == size

    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    request_ids = np.arange(n, dtype=np.int32) % 250
    positions = np.arange(n, dtype=np.int32) // 250  # every (request, position) pair distinct
    tokens = draw(np.broadcast_to(logits, (n, v)), sampling, seed=seed, request_ids=request_ids,
                  positions=positions)  # fmt: skip
    counts = np.bincount(tokens, minlength=v)
    stat, threshold = chi2_check(counts, expected, n)
    assert stat < threshold, (stat, threshold, counts / n, expected)

    if temperature != 1.0 and top_k is None and top_p is None:
        # The test has power: the untempered softmax is rejected.
        stat, threshold = chi2_check(counts, reference_probs(logits), n)
        assert stat > threshold


# --- the top-k and top-p token sets ---------------------------------------------------------------


def kept(logits, sampling):
    return np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), sampling)))


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("top_k", [None, 5, 30])
def test_top_p_set_matches_numpy(seed, temperature, top_k):
    rng = np.random.default_rng(seed)
    b, v = 64, 40
    logits = (rng.standard_normal((b, v)) * rng.uniform(0.5, 4, (b, 1))).astype(np.float32)
    for top_p in [0.05, 0.3, 0.9, 0.99, float(rng.uniform(0.01, 1))]:
        probs = reference_probs(logits, temperature, top_k)
        expected = nucleus_keep(probs, top_p)
        # Rows where float32 rounding could move the boundary are not a fair comparison.
        clear = (np.abs(nucleus_margin_mass(probs) - top_p) > 1e-5).all(-1)
        assert clear.sum() >= b - 2
        got = kept(logits, Sampling(temperature=temperature, top_k=top_k, top_p=top_p))
        np.testing.assert_array_equal(got[clear], expected[clear], f"top_p={top_p}")
        assert got.any(-1).all()


def test_top_p_edge_cases(seed):
    rng = np.random.default_rng(seed)
    b, v = 8, 40
    logits = (rng.standard_normal((b, v)) * 3).astype(np.float32)
    # top_p=1 keeps every token (even ones with a tiny probability), like no top_p at all.
    assert kept(logits, Sampling(top_p=1.0)).all()
    assert kept(logits * 10, Sampling(top_p=1.0)).all()
    # A top token with probability > top_p is kept alone.
    peaked = logits.copy()
    top = rng.integers(0, v, b)
    peaked[np.arange(b), top] += 20
    assert (reference_probs(peaked).max(-1) > 0.99).all()
    for top_p in (0.01, 0.5, 0.98):
        np.testing.assert_array_equal(kept(peaked, Sampling(top_p=top_p)), np.eye(v)[top] > 0)
    # A tiny top_p always keeps at least the top token.
    np.testing.assert_array_equal(
        kept(logits, Sampling(top_p=1e-9)), logits == logits.max(-1, keepdims=True)
    )


def test_top_k_set_and_ties():
    """Tie rule: every token equal to the cut value is kept, for top-k and top-p alike."""
    logits = np.array([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0, -1.0]], np.float32)
    # k=2 cuts at the value 2.0, held by three tokens: all three kept (4 in all).
    np.testing.assert_array_equal(kept(logits, Sampling(top_k=2))[0], logits[0] >= 2)
    np.testing.assert_array_equal(kept(logits, Sampling(top_k=4))[0], logits[0] >= 2)
    np.testing.assert_array_equal(kept(logits, Sampling(top_k=1))[0], logits[0] >= 3)
    assert kept(logits, Sampling(top_k=100)).all()  # k > vocab keeps every token
    # top_p reached inside the tied group: the whole group is kept, as the reference says.
    probs = reference_probs(logits)[0]
    top_p = float(probs[0] + probs[2] / 2)  # halfway into the first tied token
    np.testing.assert_array_equal(kept(logits, Sampling(top_p=top_p))[0], logits[0] >= 2)
    np.testing.assert_array_equal(nucleus_keep(probs, top_p), logits[0] >= 2)
    # After top_k (which kept the tied group), probabilities renormalised over that set: the top
    # token holds ~0.48 < 0.5, so top_p=0.5 reaches into the tied group and keeps all of it.
    assert reference_probs(logits, top_k=2)[0, 0] < 0.5
    np.testing.assert_array_equal(kept(logits, Sampling(top_k=2, top_p=0.5))[0], logits[0] >= 2)


def test_large_vocab(seed):
    """V ~ 150k: top-k keeps k; the nucleus reaches top_p and is minimal; draws stay inside."""
    rng = np.random.default_rng(seed)
    b, v = 2, 151_936
    logits = (rng.standard_normal((b, v)) * 3).astype(np.float32)
    assert (kept(logits, Sampling(top_k=40)).sum(-1) == 40).all()
    for sampling in (Sampling(top_p=0.9), Sampling(temperature=0.7, top_k=1000, top_p=0.5)):
        mask = kept(logits, sampling)
        probs = reference_probs(logits, sampling.temperature, sampling.top_k)
        for row in range(b):
            mass = np.sort(probs[row][mask[row]])
            assert mass.sum() >= sampling.top_p > mass[1:].sum()
        tokens = draw(logits, sampling, seed=seed)
        assert mask[np.arange(b), tokens].all()


# --- validation -----------------------------------------------------------------------------------

BAD = [
    ("temperature", -0.5),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", True),
    ("temperature", "1.0"),
    ("top_k", 0),
    ("top_k", -3),
    ("top_k", 2.0),
    ("top_k", True),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", -0.1),
    ("top_p", float("nan")),
    ("top_p", True),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=lambda x: repr(x))
def test_validation_names_the_field(field, value):
    bad = Sampling(**{field: value})
    with pytest.raises(ValueError, match=rf"^sampling\.{field}=.*: expected"):
        bad.validate()
    with pytest.raises(ValueError, match=rf"sampling\.{field}="):  # before any compilation
        sample(jnp.zeros((1, 4)), seed=0, request_ids=jnp.zeros(1, jnp.int32),
               positions=jnp.zeros(1, jnp.int32), sampling=bad)  # fmt: skip


def test_validation_message_and_normalisation():
    with pytest.raises(ValueError, match=r"^sampling\.top_p=1\.5: expected a float in \(0, 1\]$"):
        Sampling(top_p=1.5).validate()
    good = Sampling(temperature=1, top_k=np.int64(5), top_p=1).validate()
    assert good == Sampling(1.0, 5, 1.0) and type(good.top_k) is int
    assert hash(good) == hash(Sampling(1.0, 5, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(logits=jnp.zeros(4)), "logits"),
        (dict(logits=jnp.zeros((2, 4), jnp.int32)), "logits"),
        (dict(request_ids=jnp.zeros(3, jnp.int32)), "request_ids"),
        (dict(positions=jnp.zeros(2, jnp.float32)), "positions"),
        (dict(seed=1.5), "seed"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_inputs(kwargs, name):
    args = dict(
        logits=jnp.zeros((2, 4)),
        seed=0,
        request_ids=jnp.zeros(2, jnp.int32),
        positions=jnp.zeros(2, jnp.int32),
        sampling=Sampling(),
    )
    with pytest.raises(ValueError, match=rf"^{name}"):
        sample(**{**args, **kwargs})
