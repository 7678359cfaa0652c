"""The ``xds:`` section: each bad value refused at its path, all in one run; a good one loads as written."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib import ConfigError, MeshConfig


def test_the_issue_s_section_loads_and_makes_a_config_not_empty() -> None:
    config = MeshConfig.from_dict(
        {
            "xds": {
                "bootstrap": "b.json",
                "targets": ["Reviews.default.svc:9080", "ratings"],
                "initial_fetch_timeout": "5s",
            }
        }
    )
    assert config.xds is not None
    assert config.xds.targets == ["reviews.default.svc:9080", "ratings"]
    assert config.xds.initial_fetch_timeout == 5.0
    assert MeshConfig.from_dict({"xds": {}}).xds is not None, "no bootstrap: the environment names it"


@pytest.mark.parametrize(
    ("xds", "errors"),
    [
        ({"targets": ["reviews:80"]}, [("xds.targets[0]", "invalid authority 'reviews:80'")]),
        ({"targets": ["http://reviews"]}, [("xds.targets[0]", "invalid authority 'http://reviews'")]),
        ({"initial_fetch_timeout": "0s"}, [("xds.initial_fetch_timeout", "must be longer than 0s")]),
        ({"bootstrap": ""}, [("xds.bootstrap", "at least 1 character")]),
        ({"server": "x:1"}, [("xds.server", "unknown key 'server'")]),
        (
            {"targets": ["a b"], "initial_fetch_timeout": "-1s"},
            [("xds.targets[0]", "invalid authority 'a b'"), ("xds.initial_fetch_timeout", "")],
        ),
    ],
)
def test_each_bad_value_is_refused_at_its_path(xds: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict({"xds": xds})
    for path, text in errors:
        assert any(p == path and text in m for p, m in info.value.errors), info.value.errors
    assert len(info.value.errors) == len(errors)
