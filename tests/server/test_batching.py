"""Micro-batching: concurrent requests share forward passes, each gets exactly its own rows back, and an error
reaches every request of its batch."""

import asyncio

from mhtag.server.batching import MicroBatcher


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    seen = []

    def run(items):
        seen.append(len(items))
        return [x * 10 for x in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.01)
        requests = [list(range(k * 3, k * 3 + (k % 3) + 1)) for k in range(12)]
        answers = await asyncio.gather(*(batcher(r) for r in requests))
        return requests, answers, batcher.batches

    requests, answers, batches = asyncio.run(main())
    assert answers == [[x * 10 for x in r] for r in requests]
    assert batches == len(seen) < len(requests) and max(seen) <= 8 and sum(seen) == sum(map(len, requests))


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def run(items):
        calls.append(items)
        if "bad" in items:
            raise ValueError("cannot")
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.01)
        failed = await asyncio.gather(batcher(["a"]), batcher(["bad"]), return_exceptions=True)
        return failed, await batcher(["c"])

    failed, after = asyncio.run(main())
    assert all(isinstance(f, ValueError) for f in failed) and after == ["c"]
