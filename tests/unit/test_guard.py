from worker.senders.guard import CircuitBreaker, TokenBucket


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=1.0, burst=2)
    assert [bucket.wait(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.wait(0.0) == 1.0  # the third waits a second
    assert bucket.wait(0.0) == 2.0  # the fourth two
    assert bucket.wait(10.0) == 0.0  # refilled
    assert TokenBucket(rate=0, burst=0).wait(5.0) == 0.0  # no limit


def test_a_breaker_opens_after_failures_in_a_row_and_closes_after_a_good_trial():
    breaker = CircuitBreaker(threshold=3, cool_down=30)
    for _ in range(2):
        breaker.failed(0.0)
    breaker.succeeded()  # not in a row: still closed
    opened = []
    for t in range(3):
        assert breaker.wait(float(t)) == 0.0
        opened.append(breaker.failed(float(t)))
    assert opened == [False, False, True]  # what the senders log, once
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
