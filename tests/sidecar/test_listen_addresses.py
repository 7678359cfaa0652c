"""Listen addresses from flags and the environment: validated exactly as ``sidecar.*.listen`` in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import meshlib
from meshlib._config.sidecar import with_listen_addresses
from meshlib._sidecar.launch import EXIT_CONFIG, ProxyOptions, listen_addresses, run_proxy

LOOPBACK_ONLY = "admin listens on loopback only (127.0.0.0/8, ::1 or localhost), not '0.0.0.0'"


def _sidecar(**section: object) -> meshlib.MeshConfig:
    return meshlib.MeshConfig.from_dict({"allow_empty": True, "sidecar": section})


def test_addresses_given_elsewhere_replace_the_files() -> None:
    config = _sidecar(inbound={"listen": "127.0.0.1:15006", "app": "http://127.0.0.1:8000"})
    sidecar = with_listen_addresses(
        config.sidecar,
        {"outbound": ("--outbound", ":16001"), "inbound": ("ENV", "[::1]:16006"), "admin": ("--admin", "localhost:0")},
    )
    assert (sidecar.outbound.listen, sidecar.admin.listen) == (":16001", "localhost:0")
    assert sidecar.inbound is not None
    assert (sidecar.inbound.listen, sidecar.inbound.app) == ("[::1]:16006", "http://127.0.0.1:8000")
    assert sidecar.limits == config.sidecar.limits


@pytest.mark.parametrize(
    ("name", "address", "message"),
    [
        ("admin", "0.0.0.0:15000", LOOPBACK_ONLY),
        ("admin", "[::]:15000", "admin listens on loopback only (127.0.0.0/8, ::1 or localhost), not '::'"),
        ("outbound", "15001", "invalid listen address '15001': expected HOST:PORT, e.g. '127.0.0.1:15001'"),
        ("outbound", "127.0.0.1:70000", "invalid listen address '127.0.0.1:70000': port 70000 is above 65535"),
        ("inbound", ":15006", "the inbound listener needs sidecar.inbound.app in the config (where the app listens)"),
    ],
)
def test_a_bad_address_names_where_it_came_from(name: str, address: str, message: str) -> None:
    with pytest.raises(meshlib.ConfigError) as refused:
        with_listen_addresses(_sidecar().sidecar, {name: (f"--{name}", address)})  # type: ignore[dict-item]
    assert refused.value.errors == [(f"--{name}", message)]


def test_the_same_check_as_the_config_files() -> None:
    with pytest.raises(meshlib.ConfigError) as in_file:
        _sidecar(admin={"listen": "0.0.0.0:15000"})
    assert in_file.value.errors == [("sidecar.admin.listen", LOOPBACK_ONLY)]


def test_a_flag_wins_over_its_environment_variable() -> None:
    options = ProxyOptions(config=Path("mesh.yaml"), admin="127.0.0.1:1")
    environ = {
        "MESHLIB_SIDECAR_ADMIN_LISTEN": "127.0.0.1:2",
        "MESHLIB_SIDECAR_OUTBOUND_LISTEN": "127.0.0.1:3",
        "MESHLIB_SIDECAR_INBOUND_LISTEN": "",  # set but empty: as if unset
    }
    assert listen_addresses(options, environ) == {
        "outbound": ("MESHLIB_SIDECAR_OUTBOUND_LISTEN", "127.0.0.1:3"),
        "admin": ("--admin", "127.0.0.1:1"),
    }


def test_run_proxy_exits_2_before_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}}}))
    environ = {"MESHLIB_SIDECAR_ADMIN_LISTEN": "0.0.0.0:0"}
    assert run_proxy(ProxyOptions(config=path), environ) == EXIT_CONFIG
    assert capsys.readouterr().err == f"meshlib proxy: MESHLIB_SIDECAR_ADMIN_LISTEN: {LOOPBACK_ONLY}\n"
