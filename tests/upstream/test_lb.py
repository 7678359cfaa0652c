"""Load balancers: exact weighted round robin, weighted random, least request (P2C) and consistent ring hash."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Sequence
from itertools import groupby, pairwise

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from meshlib._upstream.endpoint import Endpoint, EndpointState
from meshlib._upstream.lb import LeastRequest, LoadBalancer, RandomLB, RingHash, RoundRobin, build_lb

REQUEST = httpx.Request("GET", "http://svc/")


def _endpoints(*weights: int, base: int = 9000) -> list[Endpoint]:
    urls = [f"http://127.0.0.1:{base + i}" for i in range(len(weights))]
    return [Endpoint(url, w, httpx.URL(url), EndpointState()) for url, w in zip(urls, weights, strict=True)]


def _picks(lb: LoadBalancer, n: int, request: httpx.Request = REQUEST) -> list[Endpoint]:
    picked = [lb.pick(request) for _ in range(n)]
    assert None not in picked
    return [e for e in picked if e is not None]


def _longest_run(sequence: Sequence[Endpoint], endpoint: Endpoint) -> int:
    return max((len(list(run)) for e, run in groupby(sequence) if e is endpoint), default=0)


# --- round robin -------------------------------------------------------------------------------------------------


def test_round_robin_alternates_equal_endpoints() -> None:
    a, b, c = _endpoints(1, 1, 1)
    assert _picks(RoundRobin([a, b, c]), 7) == [a, b, c, a, b, c, a]


def test_round_robin_3_to_1_is_exactly_75_25_and_smooth() -> None:
    heavy, light = _endpoints(3, 1)
    picks = _picks(RoundRobin([heavy, light]), 4_000)
    assert Counter(picks) == {heavy: 3_000, light: 1_000}
    for start in range(0, 4_000, 4):  # every full cycle of four has the exact share
        assert picks[start : start + 4].count(light) == 1
    assert _longest_run(picks, heavy) <= 3
    assert _longest_run(picks, light) == 1


def test_round_robin_spreads_a_heavy_endpoint_instead_of_sending_bursts() -> None:
    """nginx's smooth weighted round robin: weights 5, 1, 1 give a a b a c a a, not a a a a a b c."""
    a, b, c = _endpoints(5, 1, 1)
    assert _picks(RoundRobin([a, b, c]), 7) == [a, a, b, a, c, a, a]


def test_round_robin_reduces_weights_by_their_gcd() -> None:
    heavy, light = _endpoints(300, 100)
    picks = _picks(RoundRobin([heavy, light]), 8)
    assert picks.count(light) == 2
    assert _longest_run(picks, heavy) <= 3


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_round_robin_gives_each_endpoint_exactly_its_weight_in_every_cycle(weights: list[int]) -> None:
    endpoints = _endpoints(*weights)
    total = sum(weights)
    picks = _picks(RoundRobin(endpoints), 3 * total)
    for cycle in range(3):
        counts = Counter(picks[cycle * total : (cycle + 1) * total])
        assert counts == {e: e.weight for e in endpoints}


def test_round_robin_keeps_exact_shares_under_concurrent_pickers() -> None:
    heavy, light = _endpoints(3, 1)
    lb = RoundRobin([heavy, light])
    results: list[list[Endpoint]] = [[] for _ in range(8)]

    def worker(out: list[Endpoint]) -> None:
        out.extend(_picks(lb, 1_000))

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert Counter(e for out in results for e in out) == {heavy: 6_000, light: 2_000}


def test_round_robin_skips_excluded_endpoints() -> None:
    a, b, c = _endpoints(1, 1, 1)
    lb = RoundRobin([a, b, c])
    picks = [lb.pick(REQUEST, exclude={b}) for _ in range(6)]
    assert b not in picks
    assert set(picks) == {a, c}


# --- random ----------------------------------------------------------------------------------------------------


def test_random_is_weighted() -> None:
    heavy, light = _endpoints(3, 1)
    counts = Counter(_picks(RandomLB([heavy, light], random.Random(1)), 20_000))
    assert abs(counts[heavy] / 20_000 - 0.75) <= 0.015


def test_random_draws_are_independent_not_a_rotation() -> None:
    a, b = _endpoints(1, 1)
    picks = _picks(RandomLB([a, b], random.Random(2)), 2_000)
    repeats = sum(x is y for x, y in pairwise(picks))
    assert abs(repeats / 1_999 - 0.5) <= 0.05


def test_random_is_reproducible_with_a_seed() -> None:
    endpoints = _endpoints(2, 1, 1)
    first = _picks(RandomLB(endpoints, random.Random(3)), 100)
    assert _picks(RandomLB(endpoints, random.Random(3)), 100) == first


def test_random_never_picks_an_excluded_endpoint_while_another_is_left() -> None:
    a, b, c = _endpoints(1, 1, 10)
    lb = RandomLB([a, b, c], random.Random(4))
    picks = Counter(lb.pick(REQUEST, exclude={c}) for _ in range(1_000))
    assert set(picks) == {a, b}
    assert abs(picks[a] / 1_000 - 0.5) <= 0.07


# --- least request -----------------------------------------------------------------------------------------------


def test_least_request_sends_to_the_endpoint_with_fewer_in_flight() -> None:
    a, b = _endpoints(1, 1)
    lb = LeastRequest([a, b], random.Random(5))
    a.state.acquire()
    assert set(_picks(lb, 200)) == {b}
    b.state.acquire()
    b.state.acquire()
    assert set(_picks(lb, 200)) == {a}


def test_least_request_splits_idle_equal_endpoints_evenly() -> None:
    a, b = _endpoints(1, 1)
    counts = Counter(_picks(LeastRequest([a, b], random.Random(6)), 4_000))
    assert abs(counts[a] / 4_000 - 0.5) <= 0.04


def test_least_request_respects_weights_when_idle() -> None:
    """Sequential traffic (nothing in flight) is shared by weight, as Envoy's weighted least request does."""
    heavy, light = _endpoints(3, 1)
    counts = Counter(_picks(LeastRequest([heavy, light], random.Random(7)), 8_000))
    assert abs(counts[heavy] / 8_000 - 0.75) <= 0.03


def test_least_request_balances_concurrent_load_by_weight() -> None:
    """Requests held open pile up in proportion to weight: 40 open requests over 3:1 → about 30 and 10."""
    heavy, light = _endpoints(3, 1)
    lb = LeastRequest([heavy, light], random.Random(8))
    for _ in range(40):
        endpoint = lb.pick(REQUEST)
        assert endpoint is not None
        endpoint.state.acquire()
    assert abs(heavy.in_flight - 30) <= 2
    assert heavy.in_flight + light.in_flight == 40


def test_least_request_avoids_the_busiest_of_many() -> None:
    endpoints = _endpoints(1, 1, 1, 1)
    busy = endpoints[0]
    for _ in range(5):
        busy.state.acquire()
    lb = LeastRequest(endpoints, random.Random(9))
    assert busy not in _picks(lb, 500)


def test_least_request_honours_exclude_and_single_endpoints() -> None:
    a, b, c = _endpoints(1, 1, 1)
    b.state.acquire()
    c.state.acquire()
    lb = LeastRequest([a, b, c], random.Random(10))
    assert {lb.pick(REQUEST, exclude={a}) for _ in range(200)} == {b, c}
    (only,) = _endpoints(1)
    single = LeastRequest([only], random.Random(11))
    assert single.pick(REQUEST) is only
    assert single.pick(REQUEST, exclude={only}) is None


# --- ring hash ---------------------------------------------------------------------------------------------------


def _keyed(value: str, header: str = "x-user") -> httpx.Request:
    return httpx.Request("GET", "http://svc/", headers={header: value})


KEYS = [f"user-{i}" for i in range(4_000)]


def test_ring_hash_sends_the_same_key_to_the_same_endpoint_always() -> None:
    endpoints = _endpoints(1, 1, 1, 1)
    ring = RingHash(endpoints, random.Random(12), header="x-user")
    first = {key: ring.pick(_keyed(key)) for key in KEYS}
    assert all(ring.pick(_keyed(key)) is first[key] for key in KEYS)
    # A ring built again from the same endpoints (another snapshot, another process) agrees.
    again = RingHash(_endpoints(1, 1, 1, 1), random.Random(13), header="x-user")
    assert all(again.pick(_keyed(key)).url == first[key].url for key in KEYS)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-User", b"ann")],
        [(b"x-user", b"ann"), (b"accept", b"*/*"), (b"X-USER", b"bob")],  # repeated: joined with ", "
        [(b"x-user", "zoë".encode())],  # every header UTF-8: read as UTF-8
        [(b"x-user", b"zo\xeb")],  # not UTF-8: read as Latin-1
        [(b"x-other", b"ann")],
    ],
    ids=["mixed-case", "repeated", "utf-8", "latin-1", "absent"],
)
def test_ring_hash_hashes_the_header_as_httpx_reads_it(headers: list[tuple[bytes, bytes]]) -> None:
    ring = RingHash(_endpoints(1, 1), random.Random(19), header="X-User")
    request = httpx.Request("GET", "http://svc/", headers=headers)
    assert ring.key(request) == request.headers.get("x-user")


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (3, 1), (1, 2, 5)])
def test_ring_hash_spreads_keys_roughly_by_weight(weights: tuple[int, ...]) -> None:
    endpoints = _endpoints(*weights)
    ring = RingHash(endpoints, random.Random(14), header="x-user")
    counts = Counter(ring.pick(_keyed(key)) for key in KEYS)
    total = sum(weights)
    for endpoint in endpoints:
        assert abs(counts[endpoint] / len(KEYS) - endpoint.weight / total) <= 0.06, counts


def test_removing_an_endpoint_remaps_only_the_keys_it_owned() -> None:
    endpoints = _endpoints(1, 1, 1, 1)
    removed = endpoints[2]
    before = RingHash(endpoints, random.Random(15), header="x-user")
    after = RingHash([e for e in endpoints if e is not removed], random.Random(15), header="x-user")
    moved = 0
    for key in KEYS:
        old, new = before.pick(_keyed(key)), after.pick(_keyed(key))
        if old is removed:
            moved += 1
            assert new is not removed
        else:
            assert new is old, key
    assert 0.15 <= moved / len(KEYS) <= 0.35


def test_adding_an_endpoint_only_takes_keys_for_itself() -> None:
    endpoints = _endpoints(1, 1, 1, 1)
    before = RingHash(endpoints[:3], random.Random(16), header="x-user")
    after = RingHash(endpoints, random.Random(16), header="x-user")
    for key in KEYS:
        new = after.pick(_keyed(key))
        assert new is endpoints[3] or new is before.pick(_keyed(key))


@pytest.mark.parametrize(
    "cookie",
    [
        "session=abc",
        "a=1; session=abc",
        "a=1;session=abc;b=2",
        'theme=dark; session="abc"',
        "x=y;  session=abc ",
    ],
)
def test_ring_hash_reads_its_key_from_the_named_cookie(cookie: str) -> None:
    ring = RingHash(_endpoints(1, 1, 1), random.Random(17), cookie="session")
    assert ring.key(httpx.Request("GET", "http://svc/", headers={"cookie": cookie})) == "abc"


def test_ring_hash_cookie_key_needs_the_exact_cookie_name() -> None:
    ring = RingHash(_endpoints(1, 1, 1), random.Random(18), cookie="session")
    for cookie in ("xsession=abc", "sessionx=abc", "session", "a=session"):
        assert ring.key(httpx.Request("GET", "http://svc/", headers={"cookie": cookie})) is None
    assert ring.key(httpx.Request("GET", "http://svc/")) is None


def test_ring_hash_finds_the_cookie_across_several_cookie_headers() -> None:
    """HTTP/2 clients may split cookies over several ``cookie`` headers (RFC 9113 §8.2.3)."""
    ring = RingHash(_endpoints(1, 1, 1), random.Random(19), cookie="session")
    request = httpx.Request("GET", "http://svc/", headers=[("cookie", "a=1"), ("cookie", "session=abc; b=2")])
    assert ring.key(request) == "abc"


def test_ring_hash_cookie_keys_are_consistent() -> None:
    endpoints = _endpoints(1, 1, 1)
    ring = RingHash(endpoints, random.Random(20), cookie="session")
    for i in range(50):
        picks = {
            ring.pick(httpx.Request("GET", "http://svc/", headers={"cookie": f"x=1; session=s{i}"})) for _ in range(5)
        }
        assert len(picks) == 1


def test_ring_hash_header_name_is_case_insensitive() -> None:
    ring = RingHash(_endpoints(1, 1, 1), random.Random(21), header="x-user")
    assert ring.pick(_keyed("alice", "X-User")) is ring.pick(_keyed("alice"))


def test_ring_hash_without_the_key_picks_at_random() -> None:
    endpoints = _endpoints(1, 1, 1)
    ring = RingHash(endpoints, random.Random(22), header="x-user")
    counts = Counter(_picks(ring, 3_000))
    assert set(counts) == set(endpoints)
    assert all(abs(n / 3_000 - 1 / 3) <= 0.05 for n in counts.values())


def test_ring_hash_excluded_owner_moves_the_key_to_the_next_endpoint_on_the_ring() -> None:
    endpoints = _endpoints(1, 1, 1, 1)
    ring = RingHash(endpoints, random.Random(23), header="x-user")
    for key in KEYS[:200]:
        owner = ring.pick(_keyed(key))
        assert owner is not None
        fallback = ring.pick(_keyed(key), exclude={owner})
        assert fallback is not None
        assert fallback is not owner
        assert ring.pick(_keyed(key), exclude={owner}) is fallback
        assert ring.pick(_keyed(key), exclude=set(endpoints)) is None


def test_ring_hash_without_the_key_honours_exclude() -> None:
    a, b, c = _endpoints(1, 1, 1)
    ring = RingHash([a, b, c], random.Random(24), header="x-user")
    assert {ring.pick(REQUEST, exclude={a, b}) for _ in range(50)} == {c}


# --- every picker ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["round_robin", "random", "least_request", "ring_hash"])
def test_every_picker_returns_none_when_everything_is_excluded(kind: str) -> None:
    """The cluster, not the picker, decides what to do then (retry a tried endpoint, or no healthy upstream)."""
    endpoints = _endpoints(1, 1, 1)
    lb = build_lb(kind, endpoints, random.Random(25), header="x-user")
    keyed = _keyed("bob")
    assert all(lb.pick(keyed, exclude=set(endpoints[:2])) is endpoints[2] for _ in range(50))
    assert all(lb.pick(keyed, exclude=set(endpoints)) is None for _ in range(50))
    (only,) = _endpoints(1)
    single = build_lb(kind, [only], random.Random(26), header="x-user")
    assert single.pick(keyed, exclude={only}) is None


def test_build_lb_names_match_the_config_values() -> None:
    endpoints = _endpoints(1)
    for kind in ("round_robin", "random", "least_request", "ring_hash"):
        assert build_lb(kind, endpoints, random.Random(), header="x").name == kind
    with pytest.raises(ValueError, match="unknown load balancer"):
        build_lb("fastest", endpoints, random.Random())
