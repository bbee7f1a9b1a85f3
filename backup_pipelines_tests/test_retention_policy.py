"""The retention policy: properties (hypothesis) and hand-checked cases (restic 0.16 semantics)."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_pipelines.retention.policy import UNLIMITED, Candidate, RetentionRules, decide
from backup_pipelines.settings import RULES


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def snapshots(*times: str) -> list[Candidate]:
    return [Candidate(f"s{n:03d}-{t}", at(t)) for n, t in enumerate(times)]


def kept(candidates: list[Candidate], rules: RetentionRules) -> list[str]:
    """The kept snapshots' times, newest first, for readable expectations."""
    by_id = {c.snapshot_id: c.started_at for c in candidates}
    return [by_id[i].strftime("%m-%d %H") for i in decide(candidates, rules).keep]


ONLY = {"last": 0, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}
HOURLY_FOR_3_DAYS = snapshots(
    *(f"2026-11-{d:02d}T{h:02d}:05" for d in range(1, 4) for h in range(24))
)
TEN_DAYS = snapshots(*(f"2026-11-{d:02d}T12:00" for d in range(1, 11)))


@pytest.mark.parametrize(
    ("candidates", "rules", "expected"),
    [
        # --keep-daily 7 on one snapshot a day: the newest seven days
        (
            TEN_DAYS,
            RetentionRules(**{**ONLY, "daily": 7}),
            ["11-10 12", "11-09 12", "11-08 12", "11-07 12", "11-06 12", "11-05 12", "11-04 12"],
        ),
        # more counts than days: everything, the oldest included
        (
            TEN_DAYS,
            RetentionRules(**{**ONLY, "daily": 20}),
            [f"11-{d:02d} 12" for d in range(10, 0, -1)],
        ),
        # two a day: the last of each day, and the oldest because counts are left (0.16+)
        (
            snapshots(
                "2026-11-01T01:00",
                "2026-11-01T13:00",
                "2026-11-02T01:00",
                "2026-11-02T13:00",
                "2026-11-03T01:00",
                "2026-11-03T13:00",
            ),
            RetentionRules(**{**ONLY, "daily": 7}),
            ["11-03 13", "11-02 13", "11-01 13", "11-01 01"],
        ),
        # --keep-weekly 2 over three ISO weeks (Mon 9, 16, 23 Nov 2026 start weeks)
        (
            snapshots(
                "2026-11-09T00:00",
                "2026-11-12T00:00",
                "2026-11-16T00:00",
                "2026-11-20T00:00",
                "2026-11-23T00:00",
                "2026-11-25T00:00",
            ),
            RetentionRules(**{**ONLY, "weekly": 2}),
            ["11-25 00", "11-20 00"],
        ),
        # no rule at all: only the newest survives
        (TEN_DAYS, RetentionRules(**ONLY), ["11-10 12"]),
        # within 2 days of the newest (strictly younger), plus one daily
        (TEN_DAYS, RetentionRules(**{**ONLY, "daily": 1}, within_days=2), ["11-10 12", "11-09 12"]),
        # yearly unlimited: the last of every year, and the oldest
        (
            snapshots(
                "2023-03-01T00:00",
                "2023-09-01T00:00",
                "2024-05-01T00:00",
                "2025-02-01T00:00",
                "2025-12-31T23:00",
            ),
            RetentionRules(**{**ONLY, "yearly": UNLIMITED}),
            ["12-31 23", "05-01 00", "09-01 00", "03-01 00"],
        ),
        # --keep-last 3: the three newest, whatever their times
        (TEN_DAYS, RetentionRules(**{**ONLY, "last": 3}), ["11-10 12", "11-09 12", "11-08 12"]),
        # --keep-hourly 2: the last of each of the two newest hours that have snapshots
        (
            snapshots(
                "2026-11-01T10:00",
                "2026-11-01T10:30",
                "2026-11-01T11:00",
                "2026-11-01T11:45",
                "2026-11-01T12:15",
            ),
            RetentionRules(**{**ONLY, "hourly": 2}),
            ["11-01 12", "11-01 11"],
        ),
        # an hourly schedule with --keep-hourly 24 --keep-daily 7: the last day's hours, then
        # one a day (the day of the oldest kept hour counts once)
        (
            HOURLY_FOR_3_DAYS,
            RetentionRules(**{**ONLY, "hourly": 24, "daily": 7}),
            [f"11-03 {h:02d}" for h in range(23, -1, -1)] + ["11-02 23", "11-01 23", "11-01 00"],
        ),
        # daily 2 + monthly 2: rules overlap; each snapshot is kept once
        (
            snapshots(
                "2026-09-15T00:00",
                "2026-10-01T00:00",
                "2026-10-20T00:00",
                "2026-11-01T00:00",
                "2026-11-02T00:00",
            ),
            RetentionRules(**{**ONLY, "daily": 2, "monthly": 2}),
            ["11-02 00", "11-01 00", "10-20 00"],
        ),
    ],
)
def test_hand_checked_cases(candidates, rules, expected):
    assert kept(candidates, rules) == expected


counts = st.one_of(st.integers(0, 6), st.just(UNLIMITED))
rule_sets = st.builds(
    RetentionRules,
    last=counts,
    hourly=counts,
    daily=counts,
    weekly=counts,
    monthly=counts,
    yearly=counts,
    within_days=st.one_of(st.none(), st.integers(0, 60)),
)
moments = st.datetimes(
    min_value=datetime(2021, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
)
histories = st.lists(moments, min_size=0, max_size=80).map(
    lambda times: [Candidate(f"{n:04d}", t) for n, t in enumerate(times)]
)


@settings(max_examples=300, deadline=None)
@given(histories, rule_sets)
def test_policy_properties(candidates, rules):
    decision = decide(candidates, rules)
    ids = {c.snapshot_id for c in candidates}
    assert set(decision.keep) | set(decision.delete) == ids
    assert not set(decision.keep) & set(decision.delete)
    if candidates:
        newest = max(candidates, key=lambda c: (c.started_at, c.snapshot_id))
        assert newest.snapshot_id in decision.keep
    for rule in RULES:
        if rules.count(rule) != UNLIMITED:
            used = sum(rule in reasons for reasons in decision.reasons.values())
            assert used <= rules.count(rule)
    survivors = [c for c in candidates if c.snapshot_id in decision.keep]
    assert set(decide(survivors, rules).keep) == set(decision.keep)
    shuffled = candidates[:]
    random.Random(len(candidates)).shuffle(shuffled)
    assert set(decide(shuffled, rules).keep) == set(decision.keep)
    if rules.within_days is not None and candidates:
        horizon = newest.started_at - timedelta(days=rules.within_days)
        assert {c.snapshot_id for c in candidates if c.started_at > horizon} <= set(decision.keep)
