"""Job files: a table of good and bad ones, `${ENV}`, `--set`, credential refusal, and the shipped jobs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers import ROOT

from jobs.jobfile import Job, JobError, load_job
from sfp_core import SFPConfig, Vocabulary

BENCHMARKS = ["voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k"]
FAKE_AWS_KEY_ID = "AKIA" + "ABCDEFGHIJKLMNOP"  # split so secret scanners do not flag this file

BASE = """
input: {uri: images}
output: {uri: out}
model: {arch: SFP-Tiny-16, weights: random}
vocabulary: {classes: [[background, sky], [cat]]}
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Job:
    return load_job(write(tmp_path, text), overrides, environ=env or {})


def problems(tmp_path: Path, text: str, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    with pytest.raises(JobError) as info:
        load(tmp_path, text, overrides, env)
    return str(info.value)


GOOD = {
    "minimal": ("", lambda job: job.spec.resources.actors == (1, 1) and job.spec.output.mode == "incremental"),
    "preset and a knob": (
        "sfp: {preset: voc21, top_k: 5}",
        lambda job: job.config == SFPConfig.preset("voc21", top_k=5),
    ),
    "single actor count": (
        "resources: {actors: 2, gpus_per_actor: 0.5}",
        lambda job: job.spec.resources.actors == (2, 2),
    ),
    "extensions normalised": (
        "input: {uri: images, extensions: ['.JPG', Png]}",
        lambda job: job.spec.input.extensions == ["jpg", "png"],
    ),
    "non-secret storage options": (
        "input: {uri: 's3://b/p', storage_options: {endpoint_url: 'http://127.0.0.1:8333', anon: true}}",
        lambda job: job.spec.input.storage_options["anon"] is True,
    ),
    "gcsfs token mode": ("input: {uri: 'gs://b/p', storage_options: {token: anon}}", lambda job: True),
    "weights checksum": (
        "model: {arch: SFP-Tiny-16, weights: /models/tiny.pt, weights_sha256: " + "ab" * 32 + "}",
        lambda job: job.spec.model.weights_sha256 == "ab" * 32,
    ),
    "flat class list": (
        "vocabulary: {classes: [cat, dog]}",
        lambda job: job.vocabulary == Vocabulary([["cat"], ["dog"]]),
    ),
    "vocabulary file": ("vocabulary: {file: jobs/vocab/voc21.txt}", lambda job: job.vocabulary.num_classes == 21),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_good_job_files(tmp_path, case, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra, check = GOOD[case]
    assert check(load(tmp_path, _merge(extra)))


def _merge(extra: str) -> str:
    """BASE with the section that `extra` defines replaced (or added)."""
    section = extra.split(":")[0]
    lines = [line for line in BASE.splitlines() if not line.startswith(f"{section}:")]
    return "\n".join([*lines, extra]) + "\n"


BAD = {
    # case: (job text, field the message must name, another word it must contain)
    "unknown top-level key": (BASE + "outptu: {uri: x}", "outptu: unknown key", "allowed here: name, input, output"),
    "unknown nested key": (
        _merge("output: {uri: out, confidance: true}"),
        "output.confidance: unknown key",
        "confidence",
    ),
    "missing output": (
        "\n".join(line for line in BASE.splitlines() if not line.startswith("output")),
        "output: required",
        "",
    ),
    "missing input uri": (_merge("input: {extensions: [jpg]}"), "input.uri: required", ""),
    "bad mode": (_merge("output: {uri: out, mode: append}"), "output.mode", "'incremental' or 'overwrite'"),
    "bad bool": (_merge("output: {uri: out, confidence: maybe}"), "output.confidence", "boolean"),
    "empty extensions": (_merge("input: {uri: images, extensions: []}"), "input.extensions", "at least 1"),
    "actors order": (BASE + "resources: {actors: [4, 1]}", "resources.actors", "1 <= min <= max"),
    "actors zero": (BASE + "resources: {actors: 0}", "resources.actors", "got [0, 0]"),
    "negative gpus": (BASE + "resources: {gpus_per_actor: -1}", "resources.gpus_per_actor", "greater than or equal"),
    "bad batch size": (BASE + "resources: {batch_size: many}", "resources.batch_size", "integer"),
    "bad name": (BASE + "name: 'my job!'", "name", "pattern"),
    "no vocabulary": (
        "\n".join(line for line in BASE.splitlines() if "vocabulary" not in line),
        "vocabulary: required",
        "",
    ),
    "two vocabularies": (
        _merge("vocabulary: {file: jobs/vocab/voc21.txt, classes: [cat]}"),
        "vocabulary",
        "exactly one",
    ),
    "missing vocabulary file": (_merge("vocabulary: {file: nowhere/classes.txt}"), "vocabulary.file", "cannot read"),
    "empty class": (_merge("vocabulary: {classes: [[cat], []]}"), "vocabulary.classes", "class 1"),
    "class not a string": (_merge("vocabulary: {classes: [[cat, {x: 1}]]}"), "vocabulary.classes.0.1", "string"),
    "sfp out of range": (BASE + "sfp: {top_k: 0}", "sfp.top_k", "greater than or equal to 1"),
    "sfp unknown knob": (BASE + "sfp: {topk: 3}", "sfp.topk: unknown key", "top_k"),
    "sfp bad choice": (BASE + "sfp: {outlier_method: magic}", "sfp.outlier_method", "'som'"),
    "sfp unknown preset": (BASE + "sfp: {preset: voc99}", "sfp.preset", "voc21"),
    "sfp cross-field": (BASE + "sfp: {fuse_start: 9, fuse_end: 5}", "sfp", "fuse_start (9) must not exceed"),
    "sfp block beyond arch": (
        _merge("model: {arch: SFP-Tiny-16, weights: random}") + "sfp: {ref_block: 12}",
        "sfp.ref_block",
        "12 blocks",
    ),
    "arch unknown": (
        _merge("model: {arch: ViT-Q-99, weights: random}"),
        "model.arch",
        "unknown open_clip architecture",
    ),
    "arch not a ViT": (_merge("model: {arch: RN50, weights: random}"), "model.arch", "not a ViT"),
    "bad checksum": (
        _merge("model: {arch: SFP-Tiny-16, weights: random, weights_sha256: abc}"),
        "model.weights_sha256",
        "pattern",
    ),
    "secret key in storage options": (
        _merge("input: {uri: 's3://b/p', storage_options: {key: someone, secret: hunter2hunter2}}"),
        "input.storage_options.key",
        "credential",
    ),
    "nested secret key": (
        _merge("output: {uri: 's3://b/o', storage_options: {client_kwargs: {aws_secret_access_key: hunter2hunter2}}}"),
        "output.storage_options.client_kwargs.aws_secret_access_key",
        "credential",
    ),
    "secret-looking value": (_merge(f"output: {{uri: 's3://b/{FAKE_AWS_KEY_ID}/o'}}"), "output.uri", "AWS access key"),
    "password in a URL": (
        _merge("input: {uri: 's3://b/p', storage_options: {endpoint_url: 'http://user:hunter2hunter2@minio:9000'}}"),
        "input.storage_options.endpoint_url",
        "URL with a password",
    ),
    "unset variable": (_merge("input: {uri: '${SFP_TEST_UNSET}'}"), "input.uri", "SFP_TEST_UNSET is not set"),
    "secret variable": (_merge("input: {uri: 's3://${AWS_SECRET_ACCESS_KEY}/x'}"), "input.uri", "only non-secret"),
    "a variable holding a credential of the environment": (
        _merge("input: {uri: 's3://b/${SFP_TEST_COPY}'}"),
        "input.uri",
        "holds a credential",
    ),
    "a variable holding a URI with a password": (
        _merge("output: {uri: '${SFP_TEST_OUT_URI}'}"),
        "output.uri",
        "URL with a password",
    ),
    "duplicate key": (BASE + "input: {uri: again}", "duplicate key 'input'", "line 6"),
    "broken yaml": (BASE + "sfp: {top_k: [1, 2}", "not valid YAML", "line"),
    "not a mapping": ("- input\n- output\n", "a job file is a YAML mapping", "list"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_job_files_name_their_field(tmp_path, case, monkeypatch):
    monkeypatch.chdir(ROOT)
    text, field, detail = BAD[case]
    env = {
        "AWS_SECRET_ACCESS_KEY": "hunter2hunter2",
        "SFP_TEST_COPY": "hunter2hunter2",
        "SFP_TEST_OUT_URI": "s3://AKEY:hunter2/hunter2@bucket/out",
    }
    message = problems(tmp_path, text, env=env)
    assert field in message
    assert detail in message
    assert "hunter2hunter2" not in message and FAKE_AWS_KEY_ID not in message and "hunter2/" not in message


def test_all_problems_are_reported_at_once(tmp_path):
    message = problems(
        tmp_path, _merge("output: {uri: out, mode: append}") + "resources: {batch_size: 0, actors: [2, 1]}"
    )
    assert "3 problems" in message
    for field in ("output.mode", "resources.batch_size", "resources.actors"):
        assert field in message


def test_env_interpolation(tmp_path):
    text = _merge("input: {uri: '${SFP_TEST_IN}/photos', extensions: ['${SFP_TEST_EXT:-png}']}")
    text += "output: {uri: '${SFP_TEST_OUT:-fallback}', storage_options: {endpoint_url: 'http://$${HOST}'}}\n"
    text = text.replace("output: {uri: out}\n", "")
    job = load(tmp_path, text, env={"SFP_TEST_IN": "s3://bucket"})
    assert job.spec.input.uri == "s3://bucket/photos"
    assert job.spec.input.extensions == ["png"]
    assert job.spec.output.uri == "fallback"
    assert job.spec.output.storage_options["endpoint_url"] == "http://${HOST}"  # $$ is a literal $


def test_interpolated_value_is_validated_like_any_other(tmp_path):
    message = problems(tmp_path, BASE + "resources: {batch_size: '${SFP_TEST_BATCH}'}", env={"SFP_TEST_BATCH": "lots"})
    assert "resources.batch_size" in message
    job = load(tmp_path, BASE + "resources: {batch_size: '${SFP_TEST_BATCH}'}", env={"SFP_TEST_BATCH": "16"})
    assert job.spec.resources.batch_size == 16


def test_interpolated_secret_value_is_refused(tmp_path):
    message = problems(
        tmp_path, _merge("input: {uri: '${SFP_TEST_IN}'}"), env={"SFP_TEST_IN": f"s3://{FAKE_AWS_KEY_ID}"}
    )
    assert "input.uri" in message and FAKE_AWS_KEY_ID not in message


def test_set_overrides(tmp_path):
    job = load(
        tmp_path,
        BASE,
        (
            "model.weights=random",
            "resources.actors=[1, 3]",
            "output.confidence=true",
            "sfp.preset=voc21",
            "sfp.short_side=64",
            "input.storage_options.endpoint_url=http://127.0.0.1:9000",
            "vocabulary.classes=[[sky], [road], [car]]",
        ),
    )
    assert job.spec.resources.actors == (1, 3)
    assert job.spec.output.confidence is True
    assert job.config == SFPConfig.preset("voc21", short_side=64)
    assert job.spec.input.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert job.vocabulary.num_classes == 3


def test_set_can_switch_vocabulary_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "exactly one" in problems(tmp_path, BASE, ("vocabulary.file=jobs/vocab/voc20.txt",))
    job = load(tmp_path, BASE, ("vocabulary.file=jobs/vocab/voc20.txt", "vocabulary.classes=null"))
    assert job.vocabulary.num_classes == 20


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("model.weights", "--set model.weights"),
        ("=random", "--set =random"),
        ("model..arch=x", "--set model..arch=x"),
        ("name.inner=x", "name"),
        ("resources.gpu=1", "resources.gpu: unknown key"),
        ("input.storage_options.secret=s3cr3t-value", "input.storage_options.secret"),
    ],
)
def test_bad_set_overrides(tmp_path, assignment, field):
    message = problems(tmp_path, BASE + "name: plain\n", (assignment,))
    assert field in message
    assert "s3cr3t-value" not in message


def test_name_defaults_to_the_file_name(tmp_path):
    assert load_job(write(tmp_path, BASE, "nightly-run.yaml"), environ={}).spec.name == "nightly-run"


def test_yaml_is_loaded_safely(tmp_path):
    message = problems(tmp_path, BASE + "sfp: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in message


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_jobs_carry_the_reference_settings(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    job = load_job(ROOT / "jobs" / f"{name}.yaml", environ={})
    assert job.config == SFPConfig.preset(name)
    assert job.vocabulary == Vocabulary.from_file(ROOT / "jobs" / "vocab" / f"{name}.txt")
    assert (job.spec.model.arch, job.spec.model.weights) == ("ViT-B-16", "openai")
    assert job.spec.output.uri == f"out/{name}"
    relabelled = load_job(
        ROOT / "jobs" / f"{name}.yaml", environ={"SFP_INPUT": "s3://b/in", "SFP_OUTPUT": "s3://b/out"}
    )
    assert (relabelled.spec.input.uri, relabelled.spec.output.uri) == ("s3://b/in", "s3://b/out")


def test_bucket_job_needs_its_locations(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(JobError) as info:
        load_job(ROOT / "jobs" / "bucket.yaml", environ={})
    assert "input.uri: environment variable SFP_INPUT is not set" in str(info.value)
    job = load_job(ROOT / "jobs" / "bucket.yaml", environ={"SFP_INPUT": "s3://b/photos", "SFP_OUTPUT": "s3://b/labels"})
    assert job.spec.output.confidence and job.vocabulary.num_classes >= 2


def test_demo_job(monkeypatch):
    monkeypatch.chdir(ROOT)
    job = load_job(ROOT / "jobs" / "demo.yaml", environ={})
    assert (job.spec.model.arch, job.spec.model.weights) == ("ViT-B-16", "openai")
    assert job.spec.input.uri == "examples/images" and job.spec.resources.gpus_per_actor == 0
    assert job.config == SFPConfig()
    assert len(list((ROOT / "examples" / "images").glob("*.jpg"))) >= 3


def test_vocabulary_file_falls_back_to_the_installed_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no jobs/ here: the packaged copy is used
    job = load(tmp_path, _merge("vocabulary: {file: jobs/vocab/cityscapes.txt}"))
    assert job.vocabulary.num_classes == 19


@pytest.mark.parametrize(
    ("name", "variable", "value", "form"),
    [
        ("webdataset", "SFP_SHARDS", "s3://b/shards/{00000..01023}.tar", "webdataset"),
        ("parquet", "SFP_TABLES", "data/hf-dataset/data", "parquet"),
        ("list", "SFP_LIST", "s3://b/subsets/hard.csv", "list"),
    ],
)
def test_input_format_jobs(name, variable, value, form, monkeypatch):
    monkeypatch.chdir(ROOT)
    job = load_job(ROOT / "jobs" / f"{name}.yaml", environ={variable: value, "SFP_OUTPUT": "s3://b/labels"})
    assert (job.spec.input.uri, job.spec.input.format) == (value, form)
    assert job.request().input.format == form
