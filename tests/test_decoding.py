"""Search tests over scripted step functions with known probabilities."""

import math

import numpy as np
import pytest
import tensorflow as tf

from translator.decoding import beam_search, bucket_size, greedy_search, length_penalty

PAD, UNK, BOS, EOS, A, B, C = range(7)
V = 7


def table(rows: dict[int, dict[int, float]]) -> np.ndarray:
    """Transition log-probabilities prev token -> next token."""
    t = np.full((V, V), 1e-9)
    for prev, nxt in rows.items():
        for tok, p in nxt.items():
            t[prev, tok] = p
    return np.log(t / t.sum(1, keepdims=True)).astype(np.float32)


# Greedy takes A (0.6) but every continuation of A is weak; B EOS has p = 0.4.
TRAP = table({BOS: {A: 0.6, B: 0.4}, A: {C: 0.34, B: 0.33, EOS: 0.33}, B: {EOS: 1.0},
              C: {EOS: 1.0}})
# Never ends by itself.
ENDLESS = table({BOS: {C: 1.0}, C: {C: 1.0}, A: {C: 1.0}, B: {C: 1.0}, EOS: {C: 1.0}})
# EOS at once (p 0.9), or C forever.
EARLY = table({BOS: {EOS: 0.9, C: 0.1}, C: {C: 1.0}})
# Ends after A A.
SHORT = table({BOS: {A: 0.9, B: 0.1}, A: {A: 0.45, EOS: 0.55}, B: {EOS: 1.0}})


def scripted(tables: np.ndarray):
    """step_fn whose logits are tables[sentence][prev token]; state carries both."""
    tables = tf.constant(tables)

    def step(tokens, state):
        logits = tf.gather_nd(tables, tf.stack([state["sid"], tokens], 1))
        attention = tf.one_hot(tokens % 3, 3)  # tells which token was fed at each step
        return logits, {"sid": state["sid"]}, attention

    return step


def run(tables, sids, search, max_len=10, **kw):
    sids = tf.constant(sids, tf.int32)
    limit = tf.fill([len(sids)], max_len)
    if search == "greedy":
        r = greedy_search(scripted(tables), {"sid": sids}, limit, BOS, EOS, **kw)
    else:
        r = beam_search(scripted(tables), {"sid": sids}, limit, BOS, EOS, **kw)
    return r


def seqs(r, n=0):
    toks, lens = r.tokens.numpy(), r.lengths.numpy()
    return [toks[b, n, : lens[b, n]].tolist() for b in range(toks.shape[0])]


def test_beam_finds_what_greedy_misses():
    tables = np.stack([TRAP])
    greedy = run(tables, [0], "greedy")
    beam = run(tables, [0], "beam", beam_size=2)
    assert seqs(greedy) == [[A, C]]
    assert seqs(beam) == [[B]]
    assert beam.scores.numpy()[0, 0] == pytest.approx(math.log(0.4), abs=1e-4)
    assert greedy.scores.numpy()[0, 0] == pytest.approx(math.log(0.6 * 0.34), abs=1e-4)


@pytest.mark.parametrize("tab", [TRAP, SHORT])
def test_beam_one_equals_greedy(tab):
    tables = np.stack([tab])
    g = run(tables, [0], "greedy")
    b = run(tables, [0], "beam", beam_size=1)  # alpha 0: the same objective as greedy
    assert seqs(g) == seqs(b)
    assert g.scores.numpy()[0, 0] == pytest.approx(b.scores.numpy()[0, 0], abs=1e-5)


def test_n_best_sorted_by_score():
    tables = np.stack([SHORT])
    r = run(tables, [0], "beam", beam_size=4, n_best=4)
    scores = r.scores.numpy()[0]
    assert list(scores) == sorted(scores, reverse=True)
    hyps = [seqs(r, n)[0] for n in range(4)]
    assert hyps[0] == [A] and len({tuple(h) for h in hyps}) == 4


def test_eos_and_max_length_respected():
    tables = np.stack([ENDLESS])
    for search, kw in (("greedy", {}), ("beam", {"beam_size": 3})):
        r = run(tables, [0], search, max_len=5, **kw)
        assert seqs(r) == [[C] * 5]
    r = run(np.stack([SHORT]), [0], "beam", beam_size=3, n_best=3)
    toks = r.tokens.numpy()[0]
    for n in range(3):  # nothing after EOS: padding only
        length = r.lengths.numpy()[0, n]
        assert (toks[n, length:] == PAD).all()
        assert EOS not in toks[n].tolist()


def test_batched_equals_one_by_one():
    tables = np.stack([TRAP, SHORT, ENDLESS])
    for search, kw in (("greedy", {}), ("beam", {"beam_size": 3, "alpha": 0.6})):
        batched = run(tables, [0, 1, 2, 1], search, max_len=6, **kw)
        for row, sid in enumerate([0, 1, 2, 1]):
            alone = run(tables, [sid], search, max_len=6, **kw)
            assert seqs(batched)[row] == seqs(alone)[0]
            assert batched.scores.numpy()[row, 0] == pytest.approx(alone.scores.numpy()[0, 0],
                                                                   abs=1e-5)


def test_length_penalty_changes_ranking_as_specified():
    # best candidates: [B] (p=0.4, 1 token) and [A, C] (p=0.204, 2 tokens); [A, B] and
    # [A] (p=0.198) lose to one of them at every alpha
    short, long_ = math.log(0.4), math.log(0.6 * 0.34)
    tables = np.stack([TRAP])
    for alpha in (0.0, 1.0, 5.0):
        lp1 = float(length_penalty(tf.constant(1), alpha))
        lp2 = float(length_penalty(tf.constant(2), alpha))
        expected = [B] if short / lp1 >= long_ / lp2 else [A, C]
        r = run(tables, [0], "beam", beam_size=2, alpha=alpha, n_best=2)
        assert seqs(r)[0] == expected, alpha
        want = max(short / lp1, long_ / lp2)
        assert r.scores.numpy()[0, 0] == pytest.approx(want, abs=1e-4)
    assert seqs(run(tables, [0], "beam", beam_size=2, alpha=5.0))[0] == [A, C]
    assert seqs(run(tables, [0], "beam", beam_size=2, alpha=0.0))[0] == [B]


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_attention_follows_each_hypothesis(search):
    # the scripted attention is one_hot(fed token % 3): row t must match the t-th
    # token fed along this hypothesis' own path ([BOS] + hypothesis), EOS step included
    kw = {"beam_size": 3, "n_best": 3} if search == "beam" else {}
    r = run(np.stack([SHORT, TRAP]), [0, 1], search, return_attention=True, **kw)
    att, toks, lens = r.attention.numpy(), r.tokens.numpy(), r.lengths.numpy()
    assert att.shape[:2] == toks.shape[:2] and att.shape[3] == 3
    for b in range(toks.shape[0]):
        for n in range(toks.shape[1]):
            fed = [BOS] + toks[b, n, : lens[b, n]].tolist()
            np.testing.assert_array_equal(att[b, n, : len(fed)], np.eye(3)[np.array(fed) % 3])


def test_constant_state_is_not_reordered_and_changes_nothing():
    from translator.model.seq2seq import Seq2Seq

    keras_model = Seq2Seq(30, 30, embed_dim=16, hidden_size=32)
    source = tf.constant([[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]], tf.int32)
    keras_model({"source_ids": source, "target_in": source})
    limit = tf.constant([6, 6])

    def search(constant_keys):
        state = keras_model.encode(source)
        return beam_search(keras_model.step, state, limit, BOS, EOS, beam_size=4, n_best=4,
                           alpha=0.6, return_attention=True, constant_keys=constant_keys)

    plain = search(())
    fast = search(keras_model.decoder.CONSTANT_STATE)
    np.testing.assert_array_equal(plain.tokens.numpy(), fast.tokens.numpy())
    np.testing.assert_allclose(plain.scores.numpy(), fast.scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(plain.attention.numpy(), fast.attention.numpy(), atol=1e-6)


def test_beam_stops_once_no_live_beam_can_win():
    # after one step the finished hypothesis (log 0.9) beats anything the C... beam can
    # still reach, so the search stops instead of running to the length limit
    r = run(np.stack([EARLY]), [0], "beam", max_len=40, beam_size=2, alpha=0.6,
            return_attention=True)
    assert seqs(r) == [[]]
    assert r.scores.numpy()[0, 0] == pytest.approx(math.log(0.9) / (5 / 6) ** 0.6, abs=1e-4)
    assert r.attention.shape[2] == 1  # one step taken
    # asking for 2 finished hypotheses needs the C beam to end: forced at the limit
    r2 = run(np.stack([EARLY]), [0], "beam", max_len=40, beam_size=2, alpha=0.6, n_best=2,
             return_attention=True)
    assert seqs(r2, 1) == [[C] * 40]
    assert r2.attention.shape[2] == 41


def test_a_settled_sentence_leaves_the_batch_and_its_result_stays():
    # EARLY settles after one step, ENDLESS runs to the length limit: from the second
    # step on, the step function sees ENDLESS's beams only, and EARLY's result is that of
    # a search of it alone (a settled sentence's rows are gathered out, not recomputed)
    tables = np.stack([EARLY, ENDLESS])
    rows_seen = []
    step = scripted(tables)

    def counting(tokens, state):
        rows_seen.append(int(tokens.shape[0]))
        return step(tokens, state)

    limit = tf.constant([40, 8])
    sids = {"sid": tf.constant([0, 1])}
    r = beam_search(counting, sids, limit, BOS, EOS, beam_size=2, alpha=0.6,
                    return_attention=True)
    assert rows_seen[0] == 4 and set(rows_seen[1:]) == {2}, rows_seen
    assert len(rows_seen) == 9  # ENDLESS: 8 tokens, then EOS at its limit
    assert seqs(r) == [[], [C] * 8]
    alone = run(np.stack([EARLY]), [0], "beam", max_len=40, beam_size=2, alpha=0.6)
    assert r.scores.numpy()[0, 0] == pytest.approx(alone.scores.numpy()[0, 0], abs=1e-6)
    # EARLY's attention row 0 (BOS fed) is recorded, its later steps are zeros
    att = r.attention.numpy()
    np.testing.assert_array_equal(att[0, 0, 0], np.eye(3)[BOS % 3])
    assert not att[0, 0, 1:].any()


def test_a_live_beam_that_ties_the_finished_one_is_not_returned_cut_off():
    # EOS at once (p 0.5) or UNK, then UNK forever with log-probability that vanishes in
    # float32: at alpha 0 the live UNK beam ties the finished hypothesis exactly, the
    # sentence is settled, and the finished hypothesis is what comes back, alone or batched
    tie = table({BOS: {EOS: 0.5, UNK: 0.5}, UNK: {UNK: 1.0}})
    for sids in ([0], [0, 1]):
        r = run(np.stack([tie, ENDLESS]), sids, "beam", max_len=5, beam_size=2)
        assert seqs(r)[0] == [], sids
        assert r.scores.numpy()[0, 0] == pytest.approx(math.log(0.5), abs=1e-6)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_normalized_step_output_is_scored_as_given(search):
    """``normalized=True`` (an ensemble's mean log-probabilities, which need not sum to 1
    in probability) is scored as given; without it the search applies log_softmax."""
    halved = SHORT * 0.5  # a mean of log-probabilities with a zero row: not normalized
    kw = {} if search == "greedy" else {"beam_size": 2}
    as_given = run(halved[np.newaxis], [0], search, normalized=True, **kw)
    assert seqs(as_given) == [[A]]
    expected = halved[BOS, A] + halved[A, EOS]
    assert as_given.scores.numpy()[0, 0] == pytest.approx(expected, abs=1e-6)
    renormalized = run(halved[np.newaxis], [0], search, **kw)
    assert renormalized.scores.numpy()[0, 0] != pytest.approx(expected, abs=1e-3)


def reference_beam(logp, max_len, k, alpha, n_best):
    """Beam search the plain way, for one sentence, in the search's float32 arithmetic:
    every beam x every token is a candidate at every step, ranked by score, then beam,
    then token (``top_k`` over the flat row); no early stop. ``logp(prev_token)`` ->
    (vocab,) float32 log-probabilities."""
    def inv_lp(length):
        return np.float32(1.0) / np.float32(length_penalty(tf.constant(length), alpha))

    beams = [([], np.float32(0.0), False)] + [([], np.float32(-1e9), False)] * (k - 1)
    for t in range(max_len + 1):
        totals, keys = [], []  # (beam, vocab) each
        for toks, total, done in beams:
            row = logp(toks[-1] if toks else BOS)
            if done or t >= max_len:  # EOS only, at no cost
                row = np.where(np.arange(len(row)) == EOS, 0.0, -1e9).astype(np.float32)
            row = total + row
            inv = np.full(len(row), inv_lp(len(toks) + (0 if done else 1)), np.float32)
            inv[EOS] = inv_lp(len(toks))
            totals.append(row)
            keys.append(row * inv)
        vocab = len(totals[0])
        best = np.argsort(-np.concatenate(keys), kind="stable")[:k]
        nxt = []
        for i in best:
            (toks, _, done), v = beams[i // vocab], int(i % vocab)
            ends = done or v == EOS
            nxt.append((toks if ends else toks + [v], totals[i // vocab][v], ends))
        beams = nxt
    scores = [total / np.float32(length_penalty(tf.constant(len(toks)), alpha))
              for toks, total, _ in beams]
    order = np.argsort(-np.array(scores), kind="stable")[:n_best]
    return [(beams[i][0], scores[i]) for i in order]


def random_rows(vocab, rng):
    """Logits by previous token (16 rows, by token % 16): normal, with EOS likely after
    half the tokens and after the others third by probability, where the length penalty
    can rank it below its beam's next k tokens."""
    logits = (rng.normal(size=(16, vocab)) * 3).astype(np.float32)
    third = -np.sort(-logits, axis=1)[:, 2]
    logits[:, EOS] = np.where(np.arange(16) % 2 == 0, third + 0.01, third + 4)
    return logits, np.arange(vocab) % 16


def rounding_tie_rows(vocab, k):
    """Uniform rows along a chain BOS 10 12 13 .. 17 11 (the chain token 0.5 ahead), so
    the prefix's log-probability is large; then after 11, tokens 100 .. 101 + k at
    consecutive float32 values, which tie exactly once added to it; each of them ends."""
    chain = [BOS, 10, 12, 13, 14, 15, 16, 17, 11]
    rows = np.zeros((len(chain) + 1, vocab), np.float32)
    lookup = np.zeros(vocab, np.int64)  # every other token: row 0, uniform
    for i, (prev, nxt) in enumerate(zip(chain[:-1], chain[1:], strict=True), start=1):
        rows[i, nxt] = 0.5
        lookup[prev] = i
    value = np.float32(10.0)
    for tok in range(101 + k, 99, -1):  # token 101 + k highest, token 100 lowest
        rows[-1, tok] = value
        value = np.nextafter(value, np.float32(-100))
    lookup[11] = len(rows) - 1
    ends = np.zeros((1, vocab), np.float32)
    ends[0, EOS] = 10.0
    rows = np.concatenate([rows, ends])
    lookup[100:102 + k] = len(rows) - 1
    return rows, lookup


@pytest.mark.parametrize("tables", ["random", "rounding ties"])
def test_beam_search_equals_ranking_every_candidate_on_a_large_vocabulary(tables):
    """A plain search over all beam x vocab candidates, step by step to the length limit,
    in the search's float32 arithmetic, returns the same hypotheses and scores, bit for
    bit: the early stop, the shrinking batch and the per-beam length penalty change
    nothing, also where rounding makes different log-probabilities tie (lower token
    first) and on a vocabulary this size."""
    vocab = 3000
    for k, alpha, n_best in ((1, 0.0, 1), (1, 0.6, 1), (3, 0.6, 2), (5, 1.0, 5), (5, 0.6, 5)):
        if tables == "random":
            rows, lookup = random_rows(vocab, np.random.default_rng(k))
        else:
            rows, lookup = rounding_tie_rows(vocab, k)
        row_lp = tf.nn.log_softmax(rows).numpy()
        rows_t, lookup_t = tf.constant(rows), tf.constant(lookup, tf.int32)

        def step(tokens, state, rows_t=rows_t, lookup_t=lookup_t):
            return tf.gather(rows_t, tf.gather(lookup_t, tokens)), state, tf.one_hot(
                tokens % 3, 3)

        limit = tf.constant([4, 7, 12])
        r = beam_search(step, {"x": tf.zeros([3])}, limit, BOS, EOS, beam_size=k,
                        alpha=alpha, n_best=n_best)
        for s in range(3):
            want = reference_beam(lambda prev, lp=row_lp, lu=lookup: lp[lu[prev]],
                                  int(limit[s]), k, alpha, n_best)
            for n, (toks, score) in enumerate(want):
                assert seqs(r, n)[s] == toks, (k, alpha, s, n)
                assert r.scores.numpy()[s, n] == score, (k, alpha, s, n)


def test_bucket_sizes():
    assert [bucket_size(n) for n in range(0, 26)] == [
        0, 1, 2, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24, 24, 24, 24,
        24, 32]
    assert [int(bucket_size(tf.constant(n))) for n in range(0, 70)] == [
        bucket_size(n) for n in range(0, 70)]


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_bucketed_rows_change_no_result(search):
    """``bucket=True`` runs padding rows beside the active sentences so the step function
    sees only bucket sizes; every result is that of the search without it (the same
    hypotheses; the scores to the last bit or so: log_softmax's rounding may depend on a
    row's place in the batch), also with padding sentences (``real`` False) that the
    caller added."""
    kinds = [TRAP, SHORT, ENDLESS, EARLY]
    tables = np.stack(kinds)
    sids = [0, 1, 2, 3, 1, 0, 3, 3, 2, 1, 0]  # 11 sentences, ending at different steps
    kw = {"return_attention": True}
    if search == "beam":
        kw.update(beam_size=3, alpha=0.6, n_best=2)
    k = kw.get("beam_size", 1)
    limit = tf.constant([3 + i % 5 for i in range(len(sids))])
    step = scripted(tables)

    def searched(sids, limit, **more):
        seen = []

        def counting(tokens, state):
            seen.append(int(tokens.shape[0]) // k)
            return step(tokens, state)

        fn = greedy_search if search == "greedy" else beam_search
        r = fn(counting, {"sid": tf.constant(sids, tf.int32)}, limit, BOS, EOS, **kw, **more)
        return r, seen

    plain, plain_seen = searched(sids, limit)
    assert len(set(plain_seen)) > 3  # the batch shrinks through many sizes
    bucketed, seen = searched(sids, limit, bucket=True)
    assert seen[0] == len(sids) and all(n == bucket_size(n) for n in seen[1:]), seen
    assert len(seen) == len(plain_seen)
    # padding sentences (5 more, of the endless kind, up to 16) change nothing either
    real = tf.constant([True] * len(sids) + [False] * 5)
    padded, padded_seen = searched(sids + [2] * 5, tf.concat([limit, [12] * 5], 0),
                                   bucket=True, real=real)
    assert padded_seen[0] == 16 and all(n == bucket_size(n) for n in padded_seen), padded_seen
    for other in (bucketed, padded):
        for name in ("tokens", "lengths", "scores", "attention"):
            want, got = getattr(plain, name).numpy(), getattr(other, name).numpy()[: len(sids)]
            if name in ("tokens", "attention"):  # padding sentences may run longer
                got = got[:, :, : want.shape[2]]
                assert not getattr(other, name).numpy()[: len(sids), :, want.shape[2]:].any()
            if name == "scores":  # a row's place in the batch may move the last bit
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(got, want, err_msg=name)


def test_chunked_top_k_takes_what_top_k_takes_ties_and_padding_included():
    from translator.decoding import _top_k_last

    rng = np.random.default_rng(0)
    chunked = 0
    for trial in range(60):
        n = int(rng.choice([40, 2000, 4097, 40000]))  # 4097: the last chunk is padded
        k = int(rng.integers(1, 8))
        x = rng.normal(size=(6, n)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x * 2)  # many exact ties, across chunks too
        if trial % 4 == 0:
            x[:, rng.integers(0, n, 50)] = -np.inf
        if trial % 7 == 0:
            x[:] = 1.0
        if trial % 5 == 0:
            x[:, -3:] = x.max() + 1  # the best entries in the last (padded) chunk
        want = tf.math.top_k(x, k).indices.numpy()
        np.testing.assert_array_equal(_top_k_last(tf.constant(x), k).numpy(), want)
        chunked += n > 4 * k * 64
    assert chunked >= 30  # most trials took the chunked path
