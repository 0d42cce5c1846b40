"""Adaptive batching inside the HTTP worker: the images of concurrent requests share model calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class ModelBatcher:
    """Scores the crop sets of concurrent requests together, one model call at a time.

    While a call runs on the model thread, the images of the requests that arrive queue up;
    the next call takes them all (up to `max_images`). So the batch grows with the load and
    no request waits for a timer. It runs in the HTTP worker's own process: no second
    service, no copy of the crops over a socket. (A second, batchable BentoML service behind
    `bentoml.depends` did this before; its HTTP client dropped calls in flight each time it
    renewed its session, and moving crops between processes cost throughput.)

    `score_crop_sets` is `nriqa.model.prediction.score_crop_sets` bound to the model: crop sets
    in, (MOS, distortion-type probabilities or None, crop scores) out, one entry per image.
    """

    def __init__(self, score_crop_sets: Callable, max_images: int) -> None:
        self.score_crop_sets, self.max_images = score_crop_sets, max_images
        self.queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self.draining: asyncio.Task | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def score(self, crop_sets: list[np.ndarray]) -> list[tuple]:
        """(MOS, distortion-type probabilities or None, crop scores) per image."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in crop_sets]
        self.queue.extend(zip(crop_sets, futures))
        if self.draining is None or self.draining.done():
            self.draining = loop.create_task(self._drain())
        return await asyncio.gather(*futures)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            batch, self.queue = self.queue[:self.max_images], self.queue[self.max_images:]
            try:
                mos, probabilities, crop_scores = await loop.run_in_executor(
                    self.thread, self.score_crop_sets, [crops for crops, _ in batch])
            except Exception as error:  # each waiting request answers with it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for i, (_, future) in enumerate(batch):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result((float(mos[i]),
                                       None if probabilities is None else probabilities[i],
                                       crop_scores[i]))
