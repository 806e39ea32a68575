"""Continuous batching (backends/batch_decoder.py): requests that arrive while a batch decodes join it at the next
token and come out exactly as if each had been decoded alone: greedy tokens, logprobs, lengths, finish reasons.

Joins are tried at both shapes of the shared K/V buffer (a prompt longer than the batch's length so far, which
shifts every row held, and a shorter one), after every row has ended, and through the server's batcher; a training
step waiting for the weights stops the joins so that a stream of arrivals cannot starve it.
"""

import threading
import time

import pytest

from backends.openai_server import MicroBatcher
from backends.policy import LoraPolicy, LoraSettings, SampleRequest
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

LONG_PROMPT = [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> LoraPolicy:
    return LoraPolicy(ensure_tiny_model(tmp_path_factory.mktemp("cb")), LoraSettings(target_modules=LORA_TARGETS),
                      dtype="fp32")


def alone(policy: LoraPolicy, request: SampleRequest):
    (sample,) = policy.sample([request])[0]
    return sample


def scripted_poll(arrivals: dict[int, list[SampleRequest]], received: dict[str, list], calls: list[int]):
    """A poll that hands over `arrivals[k]` at its k-th call, each request's samples landing in `received`."""

    def poll():
        calls.append(len(calls) + 1)
        call = len(calls)
        return [(request, lambda samples, key=f"{call}:{i}": received.setdefault(key, samples))
                for i, request in enumerate(arrivals.get(call, []))]

    return poll


def test_joined_requests_decode_as_if_alone(policy):
    first = SampleRequest([200, 3, 3], 12, temperature=0.0)
    longer = SampleRequest(LONG_PROMPT, 8, temperature=0.0)  # joins when the batch is 3 + 3 columns long
    shorter = SampleRequest([7], 10, temperature=0.0)
    received: dict[str, list] = {}
    calls: list[int] = []
    results = policy.sample([first], poll=scripted_poll({3: [longer], 5: [shorter, longer]}, received, calls))
    assert set(received) == {"3:0", "5:0", "5:1"}
    for request, samples in ((first, results[0]), (longer, received["3:0"]), (shorter, received["5:0"]),
                             (longer, received["5:1"])):
        expected = alone(policy, request)
        (sample,) = samples
        assert sample.token_ids == expected.token_ids
        assert sample.finish_reason == expected.finish_reason
        assert sample.logprobs == pytest.approx(expected.logprobs, abs=1e-4)


def test_a_request_arriving_after_every_row_ended_is_still_decoded(policy):
    short = SampleRequest([5, 17, 99], 2, temperature=0.0)
    late = SampleRequest([200, 3, 3], 4, temperature=0.0)
    received: dict[str, list] = {}
    calls: list[int] = []
    policy.sample([short], poll=scripted_poll({2: [late]}, received, calls))
    assert received["2:0"][0].token_ids == alone(policy, late).token_ids


def test_a_row_that_ended_at_its_length_rides_along_past_it(policy):
    """A row that reached its max_tokens stays in the batch until a quarter of the rows have ended; when requests
    joined later run on past the table's width, that row must record nothing more (it once wrote past the end)."""
    short = SampleRequest([200, 3, 3], 4, temperature=0.0)
    joiners = [SampleRequest([7 + i, 3], 8, temperature=0.0) for i in range(7)]  # 8 rows: one ended < a quarter
    received: dict[str, list] = {}
    calls: list[int] = []
    results = policy.sample([short], poll=scripted_poll({1: joiners}, received, calls))
    assert results[0][0].token_ids == alone(policy, short).token_ids
    for i, request in enumerate(joiners):
        assert received[f"1:{i}"][0].token_ids == alone(policy, request).token_ids


def test_n_samples_of_a_joined_request_all_come_back(policy):
    received: dict[str, list] = {}
    calls: list[int] = []
    policy.sample([SampleRequest([5, 17], 6, temperature=1.0)],
                  poll=scripted_poll({2: [SampleRequest(LONG_PROMPT, 5, temperature=1.0, n=3)]}, received, calls))
    assert len(received["2:0"]) == 3
    assert all(1 <= len(s.token_ids) == len(s.logprobs) <= 5 for s in received["2:0"])


def test_the_server_batcher_joins_requests_to_the_running_batch(policy, monkeypatch):
    batches = []
    real_sample = policy.sample
    monkeypatch.setattr(policy, "sample", lambda *a, **k: batches.append(1) or real_sample(*a, **k))
    started = threading.Event()
    real_step_model = policy.model.get_base_model().model.forward

    def slow_forward(*args, **kwargs):  # a batch that takes long enough for the second request to arrive
        started.set()
        time.sleep(0.01)
        return real_step_model(*args, **kwargs)

    monkeypatch.setattr(policy.model.get_base_model().model, "forward", slow_forward)
    batcher = MicroBatcher(policy)
    try:
        long_one = batcher.submit(SampleRequest([200, 3, 3], 60, temperature=0.0))
        assert started.wait(30)
        time.sleep(0.1)
        short_one = batcher.submit(SampleRequest([7], 3, temperature=0.0))
        short_samples = short_one.result(timeout=60)
        assert not long_one.done(), "the short request waited for the long one to end"
        assert long_one.result(timeout=60)[0].token_ids
    finally:
        batcher.close()
    assert len(batches) == 1
    assert short_samples[0].token_ids == alone(policy, SampleRequest([7], 3, temperature=0.0)).token_ids


def test_a_base_model_request_is_not_overtaken_by_later_adapter_requests(policy, monkeypatch):
    batches = []
    real_sample = policy.sample

    def recording_sample(requests, *args, adapter=True, poll=None, **kwargs):
        batch = [r.max_tokens for r in requests]
        batches.append((adapter, batch))

        def recording_poll():
            arrived = poll()
            batch.extend(r.max_tokens for r, _ in arrived)
            return arrived

        return real_sample(requests, *args, adapter=adapter, poll=recording_poll, **kwargs)

    monkeypatch.setattr(policy, "sample", recording_sample)
    real_forward = policy.model.get_base_model().model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.01)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(policy.model.get_base_model().model, "forward", slow_forward)
    batcher = MicroBatcher(policy)
    try:
        first = batcher.submit(SampleRequest([200, 3, 3], 40, temperature=0.0))
        time.sleep(0.2)  # decoding
        base = batcher.submit(SampleRequest([7], 2, temperature=0.0), base=True)
        time.sleep(0.05)
        later = batcher.submit(SampleRequest([5, 17], 3, temperature=0.0))
        for future in (first, base, later):
            future.result(timeout=60)
    finally:
        batcher.close()
    assert batches[0] == (True, [40])  # the later adapter request did not join past the waiting base one
    assert batches[1] == (False, [2])
    assert batches[2] == (True, [3])


def test_a_waiting_training_step_stops_the_joins(policy):
    endless = lambda: [(SampleRequest([5, 17], 3, temperature=1.0), lambda samples: None)]  # noqa: E731
    sampler = threading.Thread(target=policy.sample, args=([SampleRequest([7], 3, temperature=1.0)],),
                               kwargs={"poll": endless}, daemon=True)
    sampler.start()
    time.sleep(0.2)
    got_it = threading.Event()

    def train() -> None:
        with policy.exclusive():
            got_it.set()

    threading.Thread(target=train, daemon=True).start()
    assert got_it.wait(30), "a stream of arrivals held the weights' lock for ever"
    sampler.join(30)
    assert not sampler.is_alive()
