"""Every `ray up` launch file in cluster/ validates against the autoscaler schema that ships inside
the installed ray package (ray/autoscaler/ray-schema.json), so `ray up` accepts it."""
import importlib.util
import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
LAUNCH_FILES = sorted(CLUSTER.glob("*.yaml"))


def ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")  # found without importing ray (slow)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: its autoscaler schema ships inside the ray package")
    for root in spec.submodule_search_locations:
        path = Path(root) / "autoscaler" / "ray-schema.json"
        if path.is_file():
            return json.loads(path.read_text())
    pytest.skip(f"no autoscaler/ray-schema.json under {list(spec.submodule_search_locations)}")


def test_there_are_launch_files():
    assert LAUNCH_FILES, f"no *.yaml launch files in {CLUSTER}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_matches_ray_schema(path):
    config = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message[:200]}"
              for e in validator.iter_errors(config)]
    assert not errors, f"{path.name} fails Ray's autoscaler schema:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_command_is_one_string(path):
    """A command holding ': ' unquoted parses as a YAML mapping, which no shell can run."""
    config = yaml.safe_load(path.read_text())
    for key, value in config.items():
        if key.endswith("_commands"):
            bad = [c for c in value if not isinstance(c, str)]
            assert not bad, f"{path.name}: {key} has entries that are not strings: {bad}"
