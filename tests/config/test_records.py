"""The config models as records (``meshlib/_config/records.py``): what the sidecar's serving process runs on.

A process that switches records on defines every config model as a plain
frozen record and never loads pydantic; its configs are validated by a
child process (``meshlib/_config/offload.py``) and arrive pickled. These
tests hold a record to the pydantic model it stands for: the same fields,
defaults and values, for every config the docs show and for the configs the
serving side makes itself.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib._config import offload, records
from meshlib._config.load import config_from_dict
from meshlib._config.models import MeshConfig
from meshlib._control.reload import load_settled
from meshlib._errors import ConfigError
from tests.config.record_shapes import made_by_the_serving_side, shape
from tests.docs_samples import all_pages

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: records on first, then the code; stdin is a pickle, stdout one JSON document.
IN_RECORDS = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
from meshlib._config import records
assert records.activate()
from tests.config.record_shapes import made_by_the_serving_side, shape
given = pickle.loads(sys.stdin.buffer.read())
{code}
"""


def _in_records(code: str, given: object = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", IN_RECORDS.format(code=code), str(REPO)],
        input=pickle.dumps(given),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def _documented_configs() -> list[MeshConfig]:
    """Every YAML block of the docs that is a valid mesh config."""
    found = []
    for page in all_pages():
        for block in page.blocks:
            if block.info.lower() not in ("yaml", "yml"):
                continue
            try:
                found.append(config_from_dict(yaml.safe_load(block.text)))
            except (ConfigError, yaml.YAMLError):
                continue  # a fragment, a bad example on purpose, or not a mesh config
    return found


def test_every_documented_config_arrives_in_a_serving_process_as_records_holding_the_same() -> None:
    configs = _documented_configs()
    assert len(configs) >= 30  # the docs show dozens: the comparison below is not of an empty list
    there = _in_records(
        "print(json.dumps({'shapes': [shape(c) for c in given], 'pydantic': 'pydantic' in sys.modules,"
        " 'record': all(isinstance(c, records.BaseModel) for c in given)}))",
        configs,
    )
    assert there["pydantic"] is False
    assert there["record"] is True
    assert there["shapes"] == [shape(c) for c in configs]


def test_the_configs_a_serving_process_makes_itself_hold_what_pydantic_would() -> None:
    """compile.py makes an implicit route per cluster, a default budget and inbound settings: no validation."""
    there = _in_records("print(json.dumps([shape(m) for m in made_by_the_serving_side()]))")
    assert there == [shape(m) for m in made_by_the_serving_side()]


def test_a_record_is_frozen_compares_and_hashes_by_value_and_copies_as_a_frozen_model_does() -> None:
    there = _in_records(
        """
from meshlib._config.resilience import BackoffConfig, RetryConfig
a, b = BackoffConfig(base=0.5), BackoffConfig(base=0.5)
out = {"equal": a == b, "same_hash": hash(a) == hash(b), "other": a == BackoffConfig(base=0.25)}
try:
    a.base = 1.0
except AttributeError as exc:
    out["frozen"] = str(exc)
copied = a.model_copy(update={"max": 9.0})
out["copied"] = [copied.base, copied.max, sorted(copied.model_fields_set), a.max, sorted(a.model_fields_set)]
retry = RetryConfig()
out["defaults_apart"] = retry.retry_on is not RetryConfig().retry_on
try:
    hash(retry)
except TypeError as exc:
    out["unhashable"] = str(exc)
print(json.dumps(out))
"""
    )
    assert there["equal"] is True
    assert there["same_hash"] is True
    assert there["other"] is False
    assert "frozen" in there["frozen"]
    assert there["copied"] == [0.5, 9.0, ["base", "max"], 0.25, ["base"]]
    assert there["defaults_apart"] is True  # a mutable default is the record's own, as pydantic copies it
    assert "unhashable type: 'list'" in there["unhashable"]  # as pydantic's frozen model with a list field


def test_what_needs_pydantic_in_a_serving_process_says_so() -> None:
    there = _in_records(
        """
from meshlib._config.models import MeshConfig
from meshlib._config.pydantic_names import TypeAdapter
out = []
for attempt in (
    lambda: MeshConfig.model_validate({}),
    lambda: MeshConfig(allow_empty=True).model_dump(mode="json", by_alias=True),
    lambda: MeshConfig.model_json_schema(),
    lambda: TypeAdapter(int),
):
    try:
        attempt()
        out.append("no error")
    except records.PydanticNeededError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""
    )
    assert [m.split(" needs pydantic")[0] for m in there] == [
        "validating a MeshConfig",
        "dumping a MeshConfig",  # a config made here carries no dump: only a validated one does
        "a JSON schema",
        "TypeAdapter",
    ]


def test_records_are_not_switched_on_where_the_models_are_pydantics_already() -> None:
    assert records.activate() is False  # this process (the tests) defined them: it keeps them
    assert records.ACTIVE is False
    assert isinstance(MeshConfig(allow_empty=True), records.BaseModel) is False


def test_a_config_validated_by_a_child_process_carries_its_dumps_to_a_serving_one(tmp_path: Path) -> None:
    """What the snapshot's digest and the admin's /config read, made where the config was validated."""
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "clusters:\n  reviews:\n    endpoints: ['http://127.0.0.1:9080']\n    timeout: 1500ms\n"
        "routes:\n  - cluster: reviews\n    headers: {request: {set: {authorization: Bearer secret}}}\n"
    )
    here, digest = load_settled(path, settle=0)
    there = _in_records(
        """
from meshlib._config import offload
from meshlib._config.redact import redact_config
from meshlib._control.reload import load_settled
from meshlib._snapshot.snapshot import _digest
config, digest = load_settled(given)
print(json.dumps({
    "shape": shape(config), "digest": digest, "snapshot_digest": _digest(config),
    "dump": config.model_dump(mode="json", by_alias=True), "redacted": redact_config(config),
    "pydantic": "pydantic" in sys.modules,
}))
""",
        str(path),
    )
    from meshlib._config.redact import redact_config
    from meshlib._snapshot.snapshot import _digest

    assert there["pydantic"] is False
    assert there["shape"] == shape(here)
    assert there["digest"] == digest
    assert there["snapshot_digest"] == _digest(here)
    assert there["dump"] == here.model_dump(mode="json", by_alias=True)
    assert there["redacted"] == redact_config(here)
    assert "secret" not in json.dumps(there["redacted"])


def test_a_config_error_in_the_child_is_raised_as_the_process_itself_would_raise_it() -> None:
    bad = {"clusters": {"reviews": {"endpoints": ["http://127.0.0.1:1"], "timeout": "soon"}}, "routes": [{}]}
    with pytest.raises(ConfigError) as here:
        config_from_dict(bad, source="mesh.yaml")
    with pytest.raises(ConfigError) as there:
        offload.call(config_from_dict, bad, source="mesh.yaml")
    assert there.value.errors == here.value.errors
    assert there.value.source == "mesh.yaml"
    assert str(there.value) == str(here.value)


def test_a_validation_process_that_dies_is_an_error_that_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"the config validation process failed \(exit code 3\)"):
        offload.call(os._exit, 3)


def test_an_error_that_does_not_pickle_arrives_named() -> None:
    with pytest.raises(RuntimeError, match=r"^UnpicklableError: "):
        offload.call(_raise_unpicklable)


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickling rebuilds it with one argument: it fails
        super().__init__(f"{a} and {b}")


def _raise_unpicklable() -> None:
    raise UnpicklableError(1, 2)
