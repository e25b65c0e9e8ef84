"""The micro-batcher alone: no HTTP, no model; a batch function that records its calls."""

import asyncio
import threading
import time

import pytest

from translator.serving.batching import BatcherClosed, MicroBatcher


class Recorder:
    """A batch function: upper-cases its items, records (key, items); can be held
    (blocked) so that jobs pile up behind a running batch, or fail on an item."""

    def __init__(self):
        self.calls = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, key, items):
        self.started.set()
        self.release.wait(10)
        self.calls.append((key, list(items)))
        if "boom" in items:
            raise RuntimeError("boom")
        return [s.upper() for s in items]


def hold_worker(batcher, rec):
    """Block the worker in a first batch so that the next jobs queue up behind it."""
    rec.release.clear()
    rec.started.clear()
    first = batcher.submit("k", ["first"])
    assert rec.started.wait(5)
    return first


def test_results_are_split_back_per_job_and_batches_fill_up_to_max_batch():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=4, max_wait=0.0)
    first = hold_worker(b, rec)
    futures = [b.submit("k", [f"s{i}"]) for i in range(6)] + [b.submit("k", ["a", "b"])]
    rec.release.set()
    assert first.result(5) == ["FIRST"]
    assert [f.result(5) for f in futures] == [[f"S{i}"] for i in range(6)] + [["A", "B"]]
    b.close()
    # the 7 jobs (8 items) that queued behind the first batch: 4 + 2 (+ 2 did not fit)
    assert [len(items) for _, items in rec.calls] == [1, 4, 4]
    assert rec.calls[2][1] == ["s4", "s5", "a", "b"]
    stats = b.stats()
    assert (stats.jobs, stats.items, stats.batches) == (8, 9, 3)
    assert dict(stats.sizes) == {1: 1, 4: 2}


def test_a_batch_waits_max_wait_after_its_first_job():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=64, max_wait=0.3)
    t0 = time.monotonic()
    futures = []
    for i in range(3):
        futures.append(b.submit("k", [f"s{i}"]))
        time.sleep(0.05)
    assert [f.result(5) for f in futures] == [["S0"], ["S1"], ["S2"]]
    assert time.monotonic() - t0 >= 0.29
    b.close()
    assert [items for _, items in rec.calls] == [["s0", "s1", "s2"]]


def test_a_job_that_waited_for_the_worker_waits_max_wait_from_when_it_is_free():
    # closed-loop clients: the ones the last batch answered come back a moment later and
    # join the job that queued behind that batch, instead of forming a batch of their own
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=64, max_wait=0.5)
    first = hold_worker(b, rec)
    queued = b.submit("k", ["queued"])
    time.sleep(0.6)  # longer than max_wait since the queued job arrived
    rec.release.set()
    assert first.result(5) == ["FIRST"]
    time.sleep(0.1)
    came_back = b.submit("k", ["came back"])
    assert queued.result(5) == ["QUEUED"] and came_back.result(5) == ["CAME BACK"]
    b.close()
    assert [items for _, items in rec.calls] == [["first"], ["queued", "came back"]]


def test_only_jobs_with_the_same_key_share_a_batch_and_others_keep_their_place():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=10, max_wait=0.0)
    hold_worker(b, rec)
    futures = [b.submit(key, [text]) for key, text in
               [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5")]]
    rec.release.set()
    assert [f.result(5) for f in futures] == [["1"], ["2"], ["3"], ["4"], ["5"]]
    b.close()
    assert rec.calls[1:] == [("a", ["1", "3"]), ("b", ["2", "5"]), ("c", ["4"])]


def test_held_jobs_keep_their_order_of_arrival_across_keys():
    # a job that did not fit the batch used to jump ahead of an older job of another key:
    # with a steady stream of such jobs, the other key was never served
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=4, max_wait=0.0)
    hold_worker(b, rec)
    a1 = b.submit("a", ["a1", "a1", "a1"])
    other = b.submit("b", ["b"])
    a2 = b.submit("a", ["a2", "a2", "a2"])  # does not fit a1's batch
    rec.release.set()
    assert [f.result(5) for f in (a1, other, a2)] == [["A1"] * 3, ["B"], ["A2"] * 3]
    b.close()
    assert [key for key, _ in rec.calls] == ["k", "a", "b", "a"]


def test_a_job_larger_than_max_batch_is_a_batch_of_its_own():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=2, max_wait=0.0)
    hold_worker(b, rec)
    small, big = b.submit("k", ["x"]), b.submit("k", ["a", "b", "c"])
    rec.release.set()
    assert small.result(5) == ["X"] and big.result(5) == ["A", "B", "C"]
    b.close()
    assert [items for _, items in rec.calls[1:]] == [["x"], ["a", "b", "c"]]


def test_an_error_fails_the_jobs_of_its_batch_only_and_the_worker_goes_on():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=2, max_wait=0.0)
    hold_worker(b, rec)
    same_batch = [b.submit("k", ["boom"]), b.submit("k", ["fine"])]
    next_batch = b.submit("k", ["later"])
    rec.release.set()
    for f in same_batch:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(5)
    assert next_batch.result(5) == ["LATER"]
    assert b.submit("k", ["again"]).result(5) == ["AGAIN"]
    b.close()
    assert b.stats().failed_batches == 1


def test_a_wrong_number_of_results_is_an_error():
    b = MicroBatcher(lambda key, items: items[:-1], max_batch=4, max_wait=0.0)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        b.submit("k", ["a", "b"]).result(5)
    b.close()


def test_close_answers_the_queued_jobs_then_refuses_new_ones():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=3, max_wait=1.0)
    hold_worker(b, rec)
    futures = [b.submit(key, [str(i)]) for i, key in enumerate("aabab")]
    assert b.pending == 6
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.1)
    with pytest.raises(BatcherClosed):
        b.submit("a", ["too late"])
    rec.release.set()
    closer.join(5)
    assert not closer.is_alive()
    assert [f.result(0) for f in futures] == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert b.pending == 0


def test_a_cancelled_job_is_not_decoded():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=8, max_wait=0.0)
    hold_worker(b, rec)
    gone, kept = b.submit("k", ["gone"]), b.submit("k", ["kept"])
    assert gone.cancel()
    rec.release.set()
    assert kept.result(5) == ["KEPT"]
    b.close()
    assert rec.calls[1:] == [("k", ["kept"])]
    assert b.stats().cancelled_jobs == 1 and b.pending == 0


def test_run_awaits_on_the_event_loop_without_blocking_it():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=64, max_wait=0.05)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(b.run("k", [f"s{i}"]) for i in range(20)))
        tick.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    b.close()
    assert results == [[f"S{i}"] for i in range(20)]
    assert ticks >= 5  # the loop kept running while the worker decoded
    assert max(b.stats().sizes) == 20  # all 20 shared one batch
