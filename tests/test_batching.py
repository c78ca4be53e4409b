"""The dynamic batcher's rules, with a stand-in model that records its calls (no TensorFlow)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from components.lib.serving.batching import Batcher, BatchingConfig
from components.lib.serving.protocol import InvalidImageError


@dataclass
class Outputs:
    classes: np.ndarray
    probabilities: np.ndarray


class RecordingModel:
    """Answers each image with its first byte as the class; ``b"bad"`` images do not decode."""

    def __init__(self, seconds_per_call: float = 0.05) -> None:
        self.calls: list[int] = []
        self.seconds_per_call = seconds_per_call
        self.running = self.most_running = 0
        self._lock = threading.Lock()

    def predict(self, images: list[bytes]) -> Outputs:
        with self._lock:
            self.calls.append(len(images))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            bad = [index for index, image in enumerate(images) if image == b"bad"]
            if bad:
                raise InvalidImageError(bad)
            time.sleep(self.seconds_per_call)
        finally:
            with self._lock:
                self.running -= 1
        classes = np.array([image[0] for image in images])
        return Outputs(classes, np.ones((len(images), 2)) / 2)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = Batcher(model.predict, BatchingConfig(max_batch_size=8, timeout_ms=20))
        requests = [[bytes([index])] * (1 + index % 3) for index in range(12)]
        answers = await asyncio.gather(*(batcher.predict(images) for images in requests))
        await batcher.close()
        return requests, answers

    requests, answers = run(scenario())

    for images, (classes, probabilities) in zip(requests, answers, strict=True):
        assert list(classes) == [image[0] for image in images]
        assert probabilities.shape == (len(images), 2)
    assert sum(model.calls) == sum(len(images) for images in requests)
    assert max(model.calls) <= 8 and len(model.calls) < len(requests)


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    model = RecordingModel(seconds_per_call=0)

    async def scenario() -> float:
        batcher = Batcher(model.predict, BatchingConfig(timeout_ms=2000))
        started = time.perf_counter()
        for _ in range(3):
            await batcher.predict([b"\x01"])
        await batcher.close()
        return time.perf_counter() - started

    assert run(scenario()) < 1.0
    assert model.calls == [1, 1, 1]


def test_a_request_larger_than_the_batch_is_split_and_shares_the_model() -> None:
    model = RecordingModel()

    async def scenario():
        config = BatchingConfig(max_batch_size=4, timeout_ms=50, max_concurrent_batches=1)
        batcher = Batcher(model.predict, config)
        # Queued in this order, before the batcher runs: the large request first.
        big = asyncio.ensure_future(batcher.predict([bytes([i]) for i in range(10)]))
        small = asyncio.gather(batcher.predict([b"\x0b"]), batcher.predict([b"\x0c"]))
        small_answers = await small
        calls_when_small_answered = len(model.calls)
        answer = await big
        await batcher.close()
        return answer, small_answers, calls_when_small_answered

    (classes, probabilities), small, calls_when_small_answered = run(scenario())
    assert list(classes) == list(range(10)) and probabilities.shape == (10, 2)
    assert [list(c) for c, _ in small] == [[11], [12]]
    # No call over the batch size; the small requests went first though they came later.
    assert model.calls == [2, 4, 4, 2]
    assert calls_when_small_answered == 1


def test_a_large_request_has_one_model_call_running_at_a_time() -> None:
    model = RecordingModel(seconds_per_call=0.05)

    async def scenario():
        config = BatchingConfig(max_batch_size=4, timeout_ms=0, max_concurrent_batches=2)
        batcher = Batcher(model.predict, config)
        classes, _ = await batcher.predict([bytes([i]) for i in range(16)])
        await batcher.close()
        return classes

    assert list(run(scenario())) == list(range(16))
    assert model.calls == [4, 4, 4, 4] and model.most_running == 1


def test_a_bad_image_in_a_later_piece_is_named_by_its_index_in_the_request() -> None:
    model = RecordingModel(seconds_per_call=0)
    images = [b"\x01"] * 5 + [b"bad"]

    async def scenario(config: BatchingConfig):
        batcher = Batcher(model.predict, config)
        try:
            return await asyncio.gather(batcher.predict(images), return_exceptions=True)
        finally:
            await batcher.close()

    for config in (BatchingConfig(max_batch_size=4), BatchingConfig(False, max_batch_size=4)):
        (error,) = run(scenario(config))
        assert isinstance(error, InvalidImageError) and error.indices == [5]


def test_without_batching_a_large_request_is_split_too() -> None:
    model = RecordingModel(seconds_per_call=0)

    async def scenario():
        batcher = Batcher(model.predict, BatchingConfig(False, max_batch_size=4))
        return await batcher.predict([bytes([i]) for i in range(10)])

    classes, probabilities = run(scenario())
    assert list(classes) == list(range(10)) and probabilities.shape == (10, 2)
    assert model.calls == [4, 4, 2]


def test_an_undecodable_image_fails_only_its_own_request() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = Batcher(model.predict, BatchingConfig(max_batch_size=8, timeout_ms=50))
        answers = await asyncio.gather(
            batcher.predict([b"\x01"]),
            batcher.predict([b"\x02", b"bad"]),
            batcher.predict([b"\x03"]),
            return_exceptions=True,
        )
        await batcher.close()
        return answers

    first, second, third = run(scenario())
    assert list(first[0]) == [1] and list(third[0]) == [3]
    assert isinstance(second, InvalidImageError) and second.indices == [1]
    assert "instance(s) [1]" in str(second)


@pytest.mark.parametrize("concurrent", [1, 2])
def test_at_most_max_concurrent_batches_run_at_once(concurrent: int) -> None:
    model = RecordingModel(seconds_per_call=0.1)

    async def scenario() -> None:
        config = BatchingConfig(max_batch_size=2, timeout_ms=0, max_concurrent_batches=concurrent)
        batcher = Batcher(model.predict, config)
        await asyncio.gather(*(batcher.predict([b"\x01"]) for _ in range(8)))
        await batcher.close()

    run(scenario())
    assert sum(model.calls) == 8 and max(model.calls) <= 2
    assert model.most_running == concurrent


def test_without_batching_every_request_is_its_own_call() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = Batcher(model.predict, BatchingConfig(enabled=False))
        await asyncio.gather(*(batcher.predict([b"\x01"]) for _ in range(5)))

    run(scenario())
    assert model.calls == [1] * 5


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        BatchingConfig(max_batch_size=0)
