"""The pytest plugin of meshlib.testing (entry point ``pytest11``, name ``meshlib``): ``mesh_clock``, ``mesh_factory``.

Every project that installs meshlib gets these fixtures; disable them with
``pytest -p no:meshlib``. Their names start with ``mesh_`` so that they do not
shadow a project's own fixtures.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from meshlib._clock import Clock
from meshlib._config.models import MeshConfig
from meshlib._mesh import Mesh
from meshlib.testing import FakeClock, MeshFactory

__all__ = ["mesh_clock", "mesh_factory"]


@pytest.fixture
def mesh_clock() -> FakeClock:
    """A :class:`meshlib.testing.FakeClock` at time 0, the clock of the meshes ``mesh_factory`` builds."""
    return FakeClock()


@pytest.fixture
def mesh_factory(mesh_clock: FakeClock) -> Iterator[MeshFactory]:
    """``mesh_factory(config, *, seed=0, clock=mesh_clock)`` → a :class:`meshlib.Mesh`, closed after the test.

    ``config``: a dict, a :class:`meshlib.MeshConfig`, or a YAML/JSON file path.
    """
    meshes: list[Mesh] = []

    def make(
        config: Mapping[str, Any] | MeshConfig | str | os.PathLike[str],
        *,
        seed: int | None = 0,
        clock: Clock | None = None,
    ) -> Mesh:
        options: dict[str, Any] = {"rng": random.Random(seed), "clock": clock if clock is not None else mesh_clock}
        if isinstance(config, MeshConfig):
            mesh = Mesh(config, **options)
        elif isinstance(config, str | os.PathLike):
            mesh = Mesh.from_file(config, **options)
        else:
            mesh = Mesh.from_dict(dict(config), **options)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()
