from worker.senders.guard import CircuitBreaker, TokenBucket


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=1.0, burst=2)
    assert [bucket.wait(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.wait(0.0) == 1.0  # the third waits a second
    assert bucket.wait(0.0) == 2.0  # the fourth two
    assert bucket.wait(10.0) == 0.0  # refilled
    assert TokenBucket(rate=0, burst=0).wait(5.0) == 0.0  # no limit


def test_a_breaker_opens_when_nearly_every_recent_call_failed_and_closes_after_a_good_trial():
    breaker = CircuitBreaker(threshold=3, cool_down=30)  # judged on its last 6 calls
    breaker.succeeded()
    assert [breaker.failed(0.0) for _ in range(6)] == [False] * 5 + [True]  # 5 of 6 is not 9 in 10
    breaker = CircuitBreaker(threshold=3, cool_down=30)
    assert [breaker.failed(float(t)) for t in range(3)] == [False, False, True]  # what the senders log, once
    assert breaker.state(3.0) == "open" and breaker.wait(3.0) == 29.0  # opened at the third failure
    assert breaker.failed(2.5) is False  # a call in flight failing after it keeps it open, unlogged
    breaker.opened_at = 2.0
    assert breaker.state(32.0) == "half_open" and breaker.wait(32.0) == 0.0  # the trial
    assert breaker.wait(32.1) == 1.0  # others wait for the trial's outcome
    assert breaker.failed(33.0) is True  # the trial failed: open again
    assert breaker.state(40.0) == "open"
    assert breaker.wait(64.0) == 0.0
    breaker.succeeded()
    assert breaker.state(64.0) == "closed" and breaker.wait(64.0) == 0.0
    assert breaker.failed(65.0) is False  # back: its failures before the trial are forgotten


def test_a_burst_whose_refusals_come_back_first_does_not_open_the_circuit():
    # 60 emails at once to a relay that answers half of them 451 at once and takes the
    # others more slowly: 30 failures come back before any success.
    breaker = CircuitBreaker(threshold=20, cool_down=30)
    in_flight = 60
    for _ in range(30):
        in_flight -= 1
        assert breaker.failed(0.1, in_flight) is False
    for _ in range(30):
        breaker.succeeded()
    assert breaker.state(0.2) == "closed"
    # A relay that refuses everything opens it, burst or not.
    down, in_flight = CircuitBreaker(threshold=20, cool_down=30), 60
    opened = []
    for _ in range(60):
        in_flight -= 1
        opened.append(down.failed(0.1, in_flight))
    assert 20 < opened.index(True) < 59 and opened.count(True) == 1  # before the last are back
