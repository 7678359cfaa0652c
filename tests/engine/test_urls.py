"""The engine's URL shortcuts give what httpx's own URL API gives, through httpx's parsed form or without it."""

from __future__ import annotations

import httpx
import pytest

from meshlib._engine import urls

URLS = [
    "http://shop.internal/api/v1/items?page=2",
    "http://SHOP.Internal:8080/",
    "https://xn--fiqs8s.icom.museum/a",  # an IDNA host: httpx decodes it
    "http://中国.icom.museum/a",
    "http://[::ffff:192.168.0.1]:81/x",
    "http://127.0.0.1",
    "http://a.xn--fiqs8s.museum/",  # httpx decodes only a host that starts with xn--: left as it is
    "http://shop.internal/a%20b?q=%C3%A9&x=1",
]


@pytest.fixture(params=[True, False], ids=["parsed-form", "public-api"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways: httpx's parsed form, and the public API an httpx without that form would leave."""
    if not request.param:
        monkeypatch.setattr(urls, "_FAST", False)
    return bool(request.param)


@pytest.mark.parametrize("raw", URLS)
def test_host_of_is_the_url_s_host(raw: str, fast: bool) -> None:
    url = httpx.URL(raw)
    assert urls.host_of(url) == url.host


@pytest.mark.parametrize("raw", URLS)
def test_path_of_is_the_path_without_its_query(raw: str, fast: bool) -> None:
    url = httpx.URL(raw)
    assert urls.path_of(url) == (url.raw_path.split(b"?")[0].decode("ascii") or "/")


@pytest.mark.parametrize("raw", URLS)
def test_with_origin_and_with_path_give_what_copy_with_gives(raw: str, fast: bool) -> None:
    url, origin = httpx.URL(raw), httpx.URL("https://10.0.0.7:8443")
    assert urls.with_origin(url, origin) == url.copy_with(scheme="https", host="10.0.0.7", port=8443)
    moved = urls.with_path(url, "/v2/items")
    assert moved.raw_path == b"/v2/items" + (b"?" + url.query if url.query else b"")
    assert moved.host == url.host


@pytest.mark.parametrize("raw", [*URLS, "http://shop.internal?"])  # an empty query: the request line keeps its "?"
def test_origin_key_and_target_of_are_the_url_s_raw_parts(raw: str, fast: bool) -> None:
    url = httpx.URL(raw)
    assert urls.origin_key(url) == (url.raw_scheme, url.raw_host, url.port)
    assert urls.target_of(url) == url.raw_path
