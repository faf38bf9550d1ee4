import pytest

from services.common.errors import ResourceExhausted
from services.gateway.admission import Admission, TokenBucket


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, capacity=2, updated=0.0)
    assert bucket.take(now=0.0) == 0 and bucket.take(now=0.0) == 0
    assert bucket.take(now=0.0) == pytest.approx(0.5)
    assert bucket.take(now=0.5) == 0


def test_rate_limit_is_per_tenant_with_retry_hint():
    admission = Admission(rate=0.001, burst=2, tenant_concurrency=10, max_in_flight=10)
    for _ in range(2):
        with admission.admit("a"):
            pass
    with pytest.raises(ResourceExhausted, match="over its rate limit") as excinfo, admission.admit("a"):
        pass
    assert excinfo.value.retry_after > 0
    with admission.admit("b"):  # another tenant has its own bucket
        pass


def test_tenant_concurrency_and_global_caps():
    admission = Admission(rate=1000, burst=1000, tenant_concurrency=2, max_in_flight=3)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(ResourceExhausted, match="tenant 'a' has 2 calls in flight"), admission.admit("a"):
            pass
        with admission.admit("b"):
            assert admission.in_flight == 3
            with pytest.raises(ResourceExhausted, match="gateway busy"), admission.admit("c"):
                pass
    assert admission.in_flight == 0
    with admission.admit("a"):  # slots are released
        pass
