import bisect

import numpy as np
import pytest
import tensorflow as tf
from conftest import toy_pairs

from translator.config import TokenizerConfig
from translator.corpus import Pairs
from translator.pipeline import (
    Encoded,
    bucket_batch_sizes,
    bucket_boundaries,
    count_batches,
    deal_pairs,
    filter_by_length,
    make_dataset,
)
from translator.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizers


@pytest.fixture(scope="module")
def setup():
    src, tgt = toy_pairs(300, max_words=12)
    toks = train_tokenizers(src, tgt, TokenizerConfig(vocab_size=60))
    return Pairs(src, tgt), toks


def test_bucket_sizes_respect_token_budget():
    bounds = bucket_boundaries(100)
    assert bounds[-1] == 102 and bounds == sorted(bounds)
    for b, size in zip(bounds, bucket_batch_sizes(bounds, 1000), strict=False):
        assert size * (b - 1) <= 1000


@pytest.mark.parametrize("bucketing", [True, False])
def test_batches(setup, bucketing):
    pairs, toks = setup
    kept, dropped, _, lengths = filter_by_length(pairs, toks, max_len=40)
    assert dropped == 0
    expected_batches = count_batches(lengths, max_len=40, batch_tokens=300,
                                     bucketing=bucketing, fixed_batch_size=16)
    ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=True, seed=3,
                      bucketing=bucketing, fixed_batch_size=16, lengths=lengths)
    assert ds.cardinality().numpy() == expected_batches
    seen = batches = 0
    for inputs, target_out, weight in ds:
        src = inputs["source_ids"].numpy()
        tin = inputs["target_in"].numpy()
        tout = target_out.numpy()
        w = weight.numpy()
        assert src.dtype == np.int32 and tin.shape == tout.shape == w.shape
        assert (tin[:, 0] == BOS_ID).all()
        # target_in shifted by one == target_out on real tokens
        inner = w[:, 1:] > 0  # position j + 1 is a real target token
        np.testing.assert_array_equal(tin[:, 1:][inner], tout[:, :-1][inner])
        np.testing.assert_array_equal(w, (tout != PAD_ID).astype(np.float32))
        lengths = w.sum(1).astype(int)
        assert (tout[np.arange(len(tout)), lengths - 1] == EOS_ID).all()
        src_len = (src != PAD_ID).sum(1)
        assert (src[np.arange(len(src)), src_len - 1] == EOS_ID).all()
        if bucketing:
            assert len(src) * max(src.shape[1], tin.shape[1]) <= 300
        else:
            assert len(src) <= 16
        seen += len(src)
        batches += 1
    assert seen == len(kept)  # nothing lost in batching
    assert batches == expected_batches  # the precomputed count is exact


def test_wrong_batch_count_is_caught(setup):
    pairs, toks = setup
    kept, _, _, lengths = filter_by_length(pairs, toks, max_len=40)
    # lengths that do not belong to these pairs: one more bucket's worth of sentences
    wrong = lengths + [max(lengths)] * (300 // max(lengths) + 1)
    assert count_batches(wrong, max_len=40, batch_tokens=300) > count_batches(
        lengths, max_len=40, batch_tokens=300)
    ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=False, lengths=wrong)
    with pytest.raises(tf.errors.FailedPreconditionError):
        for _ in ds:
            pass


def test_filter_by_length_counts(setup):
    pairs, toks = setup
    kept, dropped, tokens, lengths = filter_by_length(pairs, toks, max_len=8)
    assert dropped > 0 and len(kept) + dropped == len(pairs)
    assert all(len(ids) <= 8 for ids in kept.src)
    assert [(s, t) for s, t in zip(kept.src, kept.tgt, strict=True)] == [
        (s, t) for s, t in zip(toks.src.encode(pairs.src), toks.tgt.encode(pairs.tgt), strict=True)
        if len(s) <= 8 and len(t) <= 8]
    assert tokens == sum(len(t) + 1 for t in kept.tgt)
    assert lengths == [max(len(s), len(t)) + 1 for s, t in zip(kept.src, kept.tgt, strict=True)]


def test_shuffle_is_seeded(setup):
    pairs, toks = setup

    kept = filter_by_length(pairs, toks, max_len=40).ids

    def first(seed):
        ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=True, seed=seed)
        return next(iter(ds))[0]["source_ids"].numpy()

    np.testing.assert_array_equal(first(5), first(5))


def test_partial_batches_are_spread_over_the_epoch(setup):
    """Bucketing flushes its partial batches last; a shuffled epoch must not end with them."""
    pairs, toks = setup
    kept, _, _, lengths = filter_by_length(pairs, toks, max_len=40)
    bounds = bucket_boundaries(40)
    sizes = bucket_batch_sizes(bounds, 300)

    def partial_positions(shuffle):
        ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=shuffle, seed=1,
                          lengths=lengths)
        flags = []
        for inputs, _, _ in ds:
            src, tin = inputs["source_ids"].shape, inputs["target_in"].shape
            # the batch is as wide as its longest element, which picks the bucket
            flags.append(src[0] < sizes[bisect.bisect_right(bounds, max(src[1], tin[1]))])
        return [i for i, f in enumerate(flags) if f], len(flags)

    positions, n = partial_positions(shuffle=False)
    assert len(positions) >= 3  # the fixture has several part-filled buckets
    assert positions == list(range(n - len(positions), n))  # unshuffled: all at the end
    positions, n = partial_positions(shuffle=True)
    assert positions != list(range(n - len(positions), n))



@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("workers", [2, 3])
def test_pairs_are_dealt_to_workers_in_whole_batches(setup, bucketing, workers):
    """What each worker of a distributed run trains on: every pair exactly once, and batch
    counts that add up to one process's and differ by at most one (slices of the pairs
    would leave every worker a partial batch in every bucket)."""
    pairs, toks = setup
    kept, _, _, lengths = filter_by_length(pairs, toks, max_len=40)
    kw = dict(max_len=40, batch_tokens=300, bucketing=bucketing, fixed_batch_size=16)
    total = count_batches(lengths, **kw)
    dealt = deal_pairs(lengths, workers, seed=5, **kw)
    assert sorted(np.concatenate(dealt).tolist()) == list(range(len(kept)))
    counts = [count_batches([lengths[j] for j in mine], **kw) for mine in dealt]
    assert sum(counts) == total and max(counts) - min(counts) <= 1, (counts, total)
    sliced = [count_batches(lengths[k::workers], **kw) for k in range(workers)]
    if bucketing:
        assert sum(sliced) > total  # what dealing whole batches avoids
    # the same split on every worker; another seed, another split
    assert all((a == b).all() for a, b in zip(dealt, deal_pairs(lengths, workers, seed=5, **kw),
                                              strict=True))
    assert any(len(a) != len(b) or (a != b).any()
               for a, b in zip(dealt, deal_pairs(lengths, workers, seed=6, **kw), strict=True))
    # a worker's own dataset has exactly its count of batches
    mine = dealt[1]
    ids = Encoded([kept.src[j] for j in mine], [kept.tgt[j] for j in mine])
    ds = make_dataset(ids, max_len=40, batch_tokens=300, shuffle=True, seed=1,
                      bucketing=bucketing, fixed_batch_size=16,
                      lengths=[lengths[j] for j in mine])
    assert sum(1 for _ in ds) == counts[1]
