import pytest

from streamflow.backoff import Backoff


def test_delays_grow_by_the_multiplier_up_to_the_maximum() -> None:
    policy = Backoff(initial=0.05, multiplier=2.0, maximum=1.0)
    assert [policy.delay(n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_attempts_below_one_wait_the_initial_delay() -> None:
    assert Backoff(initial=0.5).delay(0) == 0.5


def test_a_thousand_attempts_wait_the_maximum_instead_of_overflowing() -> None:
    assert Backoff(initial=1.0, multiplier=10.0, maximum=30.0).delay(1000) == 30.0


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}])
def test_a_policy_that_would_not_back_off_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="back-off needs"):
        Backoff(**kwargs)
