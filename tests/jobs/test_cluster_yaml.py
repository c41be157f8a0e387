"""cluster.yaml is a valid Ray autoscaler config (Ray's own schema) and fits the jobs we ship."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from helpers import ROOT
from ray.autoscaler._private.util import prepare_config, validate_config

SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_rays_schema(cluster):
    jsonschema.validate(cluster, SCHEMA)
    validate_config(prepare_config(copy.deepcopy(cluster)))  # what `ray up` checks after filling defaults


def test_the_schema_check_has_teeth(cluster):
    typo = copy.deepcopy(cluster)
    typo["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, SCHEMA)


def test_cpu_head_and_autoscaling_gpu_workers(cluster):
    assert cluster["provider"]["type"] == "aws"
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["driver"] >= 1  # `--entrypoint-resources`
    workers = [t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 < t["max_workers"] for t in workers)


def test_setup_installs_this_project_with_the_tested_ray(cluster):
    mounted = next(iter(cluster["file_mounts"]))
    assert cluster["file_mounts"][mounted] == "."
    install = " ".join(cluster["setup_commands"])
    assert f'pip install "{mounted}"' in install
    assert f"ray[default,data]=={ray.__version__}" in install


def test_shipped_jobs_fit_the_cluster(cluster):
    for path in (ROOT / "jobs").glob("*.yaml"):
        actors = yaml.safe_load(path.read_text())["resources"]["actors"]
        assert max(actors if isinstance(actors, list) else [actors]) <= cluster["max_workers"], path.name
