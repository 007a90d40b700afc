"""Dynamic micro-batching, as Triton's and TorchServe's dynamic batchers do it: the images of concurrent requests
are collected for a few milliseconds (or until a batch is full) and go through the model in one forward pass,
run off the event loop; each request gets its own rows back. While one batch runs, the next one gathers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio


class MicroBatcher:
    """`await batcher(items)` -> `run(items of several requests)`'s results for these items, in order. `run` takes
    a list and returns a list of the same length."""

    def __init__(self, run: Callable[[list], list], max_batch: int = 32, max_wait_s: float = 0.004):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0  # forward passes run (for tests and benchmarks)

    async def __call__(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((items, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def _queued(self) -> int:
        return sum(len(items) for items, _ in self._pending)

    def _take(self) -> list[tuple[list, asyncio.Future]]:
        """The waiting requests that fit one batch (a request larger than a batch goes alone)."""
        batch, size = [], 0
        while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
            items, future = self._pending.pop(0)
            if not future.cancelled():  # its client went away
                batch.append((items, future))
                size += len(items)
        return batch

    async def _drain(self) -> None:
        while self._pending:
            if self._queued() < self.max_batch:
                await asyncio.sleep(self.max_wait_s)
            batch = self._take()
            if not batch:
                continue
            flat = [x for items, _ in batch for x in items]
            try:
                results: Any = await anyio.to_thread.run_sync(self.run, flat)
                self.batches += 1
            except Exception as exc:  # every request of the batch gets the error (the service answers each)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for items, future in batch:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
