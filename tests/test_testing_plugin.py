"""meshlib.testing: the pytest plugin works in a user's project (pytester), FakeClock and the counter helpers."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import anyio
import pytest

import meshlib
from meshlib.testing import Clock, FakeClock, MeshFactory, assert_counters, stats_of

pytest_plugins = ["pytester"]

# A user's test module: only meshlib, respx and pytest installed, no conftest. The docs' first example.
USER_TESTS = """
import httpx
import pytest

import meshlib
from meshlib.testing import assert_counters


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_the_fixtures_come_from_the_entry_point(request):
    assert request.config.pluginmanager.get_plugin("meshlib").__name__ == "meshlib._testing_plugin"


CONFIG = {
    "clusters": {
        "reviews": {
            "endpoints": ["http://127.0.0.1:9081"],
            "retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "1s", "max": "10s"}},
        }
    }
}
seen = []


def test_503_503_200_caller_sees_200_after_two_retries(respx_mock, mesh_factory, mesh_clock):
    upstream = respx_mock.get("http://127.0.0.1:9081/reviews/1").mock(
        side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200)]
    )
    mesh = mesh_factory(CONFIG)
    with mesh.client() as client:
        assert client.get("http://reviews/reviews/1").status_code == 200
    assert upstream.call_count == 3
    assert len(mesh_clock.sleeps) == 2 and mesh_clock.monotonic() == sum(mesh_clock.sleeps)
    assert_counters(mesh, "reviews", retries=2, retried_requests=1)
    seen.append(mesh)


def test_the_mesh_of_the_previous_test_was_closed():
    (mesh,) = seen
    with pytest.raises(RuntimeError, match="closed"):
        mesh.client()


@pytest.mark.anyio
async def test_async_client_and_the_same_clock(respx_mock, mesh_factory, mesh_clock):
    respx_mock.get("http://127.0.0.1:9081/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    mesh = mesh_factory(CONFIG)
    async with mesh.async_client() as client:
        assert (await client.get("http://reviews/x")).status_code == 200
    assert len(mesh_clock.sleeps) == 1


def test_config_from_a_file_and_a_clock_of_ones_own(mesh_factory, tmp_path, respx_mock):
    path = tmp_path / "mesh.yaml"
    path.write_text("clusters:\\n  reviews:\\n    endpoints: ['http://127.0.0.1:9081']\\n")
    respx_mock.get("http://127.0.0.1:9081/x").mock(return_value=httpx.Response(204))
    mesh = mesh_factory(path, seed=None, clock=meshlib.testing.SystemClock())
    with mesh.client() as client:
        assert client.get("http://reviews/x").status_code == 204
    assert mesh_factory(str(path)).config == mesh.config
    assert mesh_factory(mesh.config).config == mesh.config
"""


def test_the_plugin_gives_a_users_project_its_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    # In process, but with a fresh plugin manager: only the pytest11 entry point can have registered the fixtures.
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


DOCS = Path(__file__).parents[1] / "docs" / "testing.md"


def test_the_examples_of_docs_testing_md_pass_in_a_users_project(pytester: pytest.Pytester) -> None:
    """Every example test in docs/testing.md, run as one test module of a project with meshlib installed."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    examples = [block for block in blocks if "def test_" in block]
    assert len(examples) >= 5
    pytester.makepyfile(test_docs="\n\n".join(examples))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(examples))


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_uses_it(mesh_clock):\n    pass\n")
    result = pytester.runpytest("-p", "no:meshlib", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mesh_clock' not found*"])


def test_our_own_tests_get_the_same_fixtures(mesh_factory: MeshFactory, mesh_clock: FakeClock) -> None:
    mesh = mesh_factory({"clusters": {"a": {"endpoints": ["http://127.0.0.1:1"]}}})
    assert mesh.snapshot.clock is mesh_clock


def test_fake_clock_moves_only_when_asked() -> None:
    clock = FakeClock(start=100.0)
    assert clock.monotonic() == 100.0
    clock.sleep(1.5)
    clock.sleep(-3)  # a negative sleep is a sleep of 0, as with time.sleep's callers in the mesh
    assert clock.advance(0.5) == 102.0
    assert clock.monotonic() == 102.0
    assert clock.sleeps == [1.5, 0.0]  # advance() is not a sleep
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    assert "now=102.0" in repr(clock)


@pytest.mark.anyio
async def test_fake_clock_asleep_advances_at_once_and_lets_other_tasks_run() -> None:
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other)
        with anyio.fail_after(1):  # real time: the fake 3600 s must not be waited
            await clock.asleep(3600)
        ran.append("after sleep")
    assert ran == ["other", "after sleep"]
    assert clock.monotonic() == 3600
    assert clock.sleeps == [3600]


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock()

    def sleep_a_lot() -> None:
        for _ in range(1000):
            clock.sleep(1)

    threads = [threading.Thread(target=sleep_a_lot) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert clock.monotonic() == 8000
    assert len(clock.sleeps) == 8000


def test_a_fake_clock_is_a_clock_to_mypy_and_to_the_mesh() -> None:
    clock: Clock = FakeClock()
    with meshlib.Mesh(clock=clock) as mesh:
        assert mesh.snapshot.clock is clock


def test_stats_of_names_the_known_clusters_when_asked_for_another(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory({"clusters": {"a": {"endpoints": ["http://127.0.0.1:1"]}}})
    assert stats_of(mesh, "a") == {}
    with pytest.raises(KeyError, match=r"no cluster 'b' in this mesh \(clusters: a\)"):
        stats_of(mesh, "b")


def test_assert_counters_fails_with_a_readable_diff(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory({"clusters": {"a": {"endpoints": ["http://127.0.0.1:1"]}}})
    mesh.snapshot.clusters["a"].state.count("retries", 1)
    mesh.snapshot.clusters["a"].state.count("retry_budget_exhausted", 3)
    assert_counters(mesh, "a", retries=1, retry_budget_exhausted=3, breaker_open=0)
    with pytest.raises(AssertionError) as raised:
        assert_counters(mesh, "a", retries=2, retry_budget_exhausted=3, breaker_open=1)
    assert str(raised.value) == (
        "counters of cluster 'a' differ:\n"
        "  retries: expected 2, got 1\n"
        "  breaker_open: expected 1, got 0\n"
        "all counters: {'retries': 1, 'retry_budget_exhausted': 3}"
    )


def test_the_public_module_exports_what_the_docs_use() -> None:
    assert meshlib.testing.__all__ == sorted(meshlib.testing.__all__)
    assert {"FakeClock", "MeshFactory", "assert_counters", "stats_of"} <= set(meshlib.testing.__all__)
