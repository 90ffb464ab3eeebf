"""The review queue's sampling rule and audit (pure), and relabelling through the store's label sidecar."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.console.review import (
    ReviewPolicy,
    ReviewQueue,
    audit,
    is_classifier_positive,
    review_rate,
    sampled,
    wilson_lower,
)
from flywheel.data.labels import apply_labels, read_labels


def test_a_new_classifier_has_every_positive_reviewed():
    assert review_rate(0, 0) == 1.0
    assert review_rate(19, 0) == 1.0  # fewer than min_audits, however good
    # the measured classifier (0.69 precision) stays in full review
    assert review_rate(69, 31) == 1.0


def test_fewer_positives_are_reviewed_as_audited_precision_rises():
    rates = [review_rate(c, 200 - c) for c in (140, 170, 190, 198, 200)]
    assert rates == sorted(rates, reverse=True) and rates[0] == 1.0
    assert 0.05 <= rates[-1] < 0.2  # about 1 in 20 once 200 reviews are all confirmed
    assert review_rate(10_000, 0) == ReviewPolicy().min_rate  # never below the floor


@given(st.integers(0, 500), st.integers(0, 500))
def test_rate_is_a_share_and_more_rejections_never_lower_it(confirmed, rejected):
    r = review_rate(confirmed, rejected)
    assert 0.05 <= r <= 1.0
    assert review_rate(confirmed, rejected + 1) >= r - 1e-12


def test_wilson_lower_bound():
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(10, 10) < 1.0 and wilson_lower(10, 10) > 0.6
    assert wilson_lower(50, 100) == pytest.approx(0.4038, abs=1e-3)
    with pytest.raises(ValueError, match="successes"):
        wilson_lower(3, 2)


def test_sampling_is_deterministic_and_at_the_rate():
    keys = [f"{i}@{i * 1.5:.6f}" for i in range(4000)]
    assert all(sampled(k, 1.0) for k in keys[:100])
    picked = [k for k in keys if sampled(k, 0.25)]
    assert picked == [k for k in keys if sampled(k, 0.25)]
    assert 0.22 < len(picked) / len(keys) < 0.28
    assert set(k for k in keys if sampled(k, 0.1)) <= set(picked)  # a lower rate samples a subset


def test_audit_weighs_reviews_by_their_sampling_rate():
    a = audit([], 10)
    assert (a.precision, a.fp_per_100, a.rate) == (None, None, 1.0)
    a = audit([(True, 1.0)] * 6 + [(False, 1.0)] * 4, 50)
    assert a.precision == pytest.approx(0.6) and a.fp_per_100 == pytest.approx(8.0)
    # a rejection sampled at 1/4 stands for 4 false positives
    a = audit([(True, 1.0), (False, 0.25)], 100)
    assert a.precision == pytest.approx(0.2) and a.fp_per_100 == pytest.approx(4.0)
    with pytest.raises(ValueError, match="rate"):
        audit([(True, 0.0)], 1)


class _Rec:
    def __init__(self, index, success, source="rl", extra=None, started_at=1.0):
        self.index, self.success, self.source = index, success, source
        self.extra, self.started_at = extra or {}, started_at


def test_classifier_positives_are_successes_a_classifier_labelled():
    assert is_classifier_positive(_Rec(0, True, "rl"))
    assert is_classifier_positive(_Rec(0, True, "policy"))
    assert not is_classifier_positive(_Rec(0, True, "human"))
    assert not is_classifier_positive(_Rec(0, False, "rl"))
    assert not is_classifier_positive(_Rec(0, True, "rl", {"success_by": "operator"}))
    assert is_classifier_positive(_Rec(0, True, "human", {"success_by": "classifier"}))
    # a rejected positive stays a positive of the classifier (its label before the review counts)
    assert is_classifier_positive(_Rec(0, False, "rl", {"review": {"previous": True}}))


def make_store(path, labels=((True, "rl"), (False, "rl"), (True, "human"), (True, "policy"), (None, "rl")),
               image_size=16, steps=3):
    """A small store whose episodes have the given (success, source); images are a gradient."""
    from flywheel.data import EpisodeStore
    from rig.spec import default_spec

    spec = default_spec(image_size)
    with EpisodeStore(path, "w", spec) as store:
        for ok, src in labels:
            arrays = {}
            for k, s in spec.observation_specs().items():
                if s.dtype == "uint8":
                    v = np.broadcast_to(np.linspace(0, 255, s.shape[1], dtype=np.uint8)[None, :, None], s.shape)
                else:
                    v = np.zeros(s.shape, s.dtype)
                    if k == "state/ee_quat":
                        v[3] = 1.0
                arrays[k] = np.stack([v] * steps)
            arrays["action"] = np.zeros((steps, 7), np.float32)
            store.add_episode(arrays, success=ok, source=src, task="reach")
    return path


@pytest.fixture
def store_path(tmp_path):
    return make_store(tmp_path / "ep.zarr")


def test_queue_reviews_relabel_the_episode_for_every_reader(store_path):
    from flywheel.data import EpisodeStore

    opened_before = EpisodeStore(store_path, "r")
    q = ReviewQueue(str(store_path))
    q.refresh()
    assert [r.index for r in q.pending()] == [0, 3]  # the rl and policy successes, not the human one
    rec = q.review(0, "reject")
    assert rec.success is False and rec.extra["review"]["previous"] is True
    assert rec.extra["review"]["audit"]["precision"] == 0.0
    assert rec.extra["review"]["audit"]["fp_per_100"] == pytest.approx(20.0)  # 1 of 5 episodes
    q.review(3, "confirm")
    assert q.pending() == [] and q.audit().precision == pytest.approx(0.5)
    # every reader sees the operator's labels: the store applies the sidecar on load and refresh
    assert [r.success for r in EpisodeStore(store_path, "r").records] == [False, False, True, True, None]
    assert opened_before.refresh() is False and opened_before.records[0].success is False
    assert len(read_labels(store_path)) == 2
    # a second review replaces the first; its "previous" is still the classifier's label
    q.review(0, "confirm")
    records = EpisodeStore(store_path, "r").records
    apply_labels(store_path, records)
    assert records[0].success is True and records[0].extra["review"]["previous"] is True
    with pytest.raises(LookupError, match="not a classifier positive"):
        q.review(2, "confirm")  # a human's success is not the classifier's
    with pytest.raises(ValueError, match="verdict"):
        q.review(3, "maybe")


def test_a_success_the_console_saw_the_classifier_call_joins_the_queue(store_path):
    q = ReviewQueue(str(store_path))
    q.refresh()
    human = q.records[2]
    assert human.source == "human" and human.success is True and not q.is_positive(human)
    q.classifier_starts = [human.started_at + 0.001, human.started_at + 5.0]  # the second matches nothing
    q.refresh()
    assert [r.index for r in q.pending()] == [0, 2, 3]
    assert q.review(2, "reject").success is False
    assert not q.is_positive(q.records[1])  # a failure never is, whatever the classifier said


def test_labels_of_a_replaced_store_are_ignored(store_path):
    from flywheel.data import EpisodeStore

    q = ReviewQueue(str(store_path))
    q.refresh()
    q.review(0, "reject")
    assert EpisodeStore(store_path, "r").records[0].success is False
    make_store(store_path)  # mode="w": the same indices, new episodes
    records = EpisodeStore(store_path, "r").records
    assert records[0].success is True and "review" not in records[0].extra
    assert apply_labels(store_path, records) == 0


def test_a_missing_store_gives_an_empty_queue(tmp_path):
    q = ReviewQueue(str(tmp_path / "none.zarr"))
    q.refresh()
    assert q.pending() == [] and q.error and q.audit().rate == 1.0
    with pytest.raises(LookupError, match="no episode store"):
        q.review(0, "confirm")
