"""URIs as locations: parsing that refuses what could escape a prefix, the policy on URI prefixes, the
content-keyed input cache, atomic no-clobber uploads, and bundles read from a store. fsspec's in-memory
filesystem stands in for S3 (the production tests run a real S3 server)."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest

from cosmos_pipeline import storage
from cosmos_pipeline.batch import check_batch
from cosmos_pipeline.bundle import request_rows
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import Policy, check_readable
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.runner import write_outputs
from cosmos_pipeline.sidecar import read_sidecar
from cosmos_pipeline.storage import URI, location
from tasks.scrub import scrub
from tests.conftest import ASSETS

IMAGE = (ASSETS / "media" / "warehouse_robot.png").read_bytes()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fsspec.AbstractFileSystem]:
    """An empty `memory://` store and a cache of this test's own."""
    monkeypatch.setenv("COSMOS_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("s3://media/inputs/../secrets/key.png", "`..` in the key"),
        ("s3://media/inputs/%2e%2e/key.png", "`%2e%2e` in the key"),
        ("s3://media/inputs/./key.png", "`.` in the key"),
        ("s3://media//key.png", "an empty segment"),
        ("s3://AKIAXXXXXXXXXXXXXXXX:secret@media/key.png", "credentials in a URI"),
        ("s3://media/key.png?versionId=3", "query"),
        ("simplecache::s3://media/key.png", "chained URLs"),
        ("s3:///key.png", "names no bucket"),
        ("file://other-host/etc/passwd", "no host name"),
        ("", "the path is empty"),  # was the working folder ("Is a directory: '.'")
        ("inputs/robot\x00.png", "NUL character"),
    ],
)
def test_hostile_uris_are_refused_when_parsed(value: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as refused:
        location(value)
    assert "secret@" not in str(refused.value)


def test_locations_keep_uris_and_make_file_uris_local_paths() -> None:
    uri = location("s3://media/inputs/robot.png")
    assert isinstance(uri, URI) and (uri.bucket, uri.key, uri.name, uri.suffix) == (
        "media", "inputs/robot.png", "robot.png", ".png",
    )  # fmt: skip
    assert uri.parent == "s3://media/inputs" and uri.with_name("x.mp4") == "s3://media/inputs/x.mp4"
    assert location("file:///srv/inputs/robot.png") == Path("/srv/inputs/robot.png")
    assert location("inputs/robot.png") == Path("inputs/robot.png")
    with pytest.raises(InputError, match="`..`"):
        uri.parent / "../../x.png"
    request = GenerationRequest(prompt="a robot", input_path=uri, output_path="s3://media/outputs/a.mp4")
    assert (
        request.source == "image"
        and request.model_dump(mode="json")["output_path"] == "s3://media/outputs/a.mp4"
    )


def test_policy_confines_uris_to_their_prefixes() -> None:
    policy = Policy(input_roots=("s3://media/inputs", "assets"), output_root="s3://media/outputs")
    check_readable(location("s3://media/inputs/a/robot.png"), policy, "input")
    check_readable(ASSETS / "media" / "warehouse_robot.png", policy, "input")
    for outside in ("s3://media/inputs-evil/robot.png", "s3://other/inputs/robot.png", "gs://media/inputs/x.png",
                    "file:///etc/passwd", "/etc/passwd"):  # fmt: skip
        with pytest.raises(InputError, match="outside the allowed input folders"):
            check_readable(location(outside), policy, "input")


def test_an_input_is_fetched_once_into_a_cache_keyed_by_content(store, tmp_path: Path) -> None:
    store.pipe_file("/media/inputs/robot.png", IMAGE)
    store.pipe_file("/media/copy/same.png", IMAGE)
    first = storage.local("memory://media/inputs/robot.png")
    assert first == tmp_path / "cache" / "media" / storage.content_digest(first) / "robot.png"
    assert first.read_bytes() == IMAGE and first.parent.name == hashlib.sha256(IMAGE).hexdigest()
    stamp = first.stat().st_mtime_ns
    assert storage.local("memory://media/inputs/robot.png").stat().st_mtime_ns == stamp  # no second download
    assert storage.local("memory://media/copy/same.png").parent == first.parent  # same content, same blob
    assert storage.content_digest(URI("memory://media/inputs/robot.png")) == first.parent.name
    store.pipe_file("/media/inputs/robot.png", b"changed")  # a new version of the object: fetched again
    assert storage.local("memory://media/inputs/robot.png").read_bytes() == b"changed"
    with pytest.raises(InputError, match="over the limit of 10"):
        storage.local("memory://media/copy/same.png", max_bytes=10)
    with pytest.raises(InputError, match="does not exist"):
        storage.local("memory://media/inputs/missing.png")


def test_a_folder_uri_is_fetched_file_by_file(store) -> None:
    store.pipe_file("/media/lora/pytorch_lora_weights.safetensors", b"weights")
    store.pipe_file("/media/lora/sub/config.json", b"{}")
    folder = storage.local("memory://media/lora")
    assert (folder / "pytorch_lora_weights.safetensors").read_bytes() == b"weights"
    assert (folder / "sub" / "config.json").read_bytes() == b"{}"
    assert storage.local("memory://media/lora") == folder


class Result:
    """What `write_outputs` reads of a generation result."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.frames = np.zeros((5, 32, 48, 3), dtype=np.uint8)


def test_outputs_are_uploaded_whole_with_their_sidecar_and_never_clobbered(
    store, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("cosmos_pipeline.runner.write_sidecar", fake_sidecar)
    request = GenerationRequest(prompt="a robot", output_path="memory://media/outputs/a.mp4", num_frames=5)
    staging = tmp_path / "staging"
    staging.mkdir()
    assert write_outputs(Result(request), {"mlflow_run_id": "r1"}, staging) == (
        "memory://media/outputs/a.mp4", "memory://media/outputs/a.mp4.json",
    )  # fmt: skip
    assert store.cat_file("/media/outputs/a.mp4")[4:8] == b"ftyp"
    assert read_sidecar(request.output_path)["mlflow_run_id"] == "r1"
    assert sorted(path.name for path in staging.iterdir()) == ["a.mp4", "a.mp4.json"]  # for tracking
    with pytest.raises(InputError, match="output exists: memory://media/outputs/a.mp4"):
        write_outputs(Result(request), {"mlflow_run_id": "r2"})
    assert read_sidecar(request.output_path)["mlflow_run_id"] == "r1"
    replaced = request.model_copy(update={"overwrite": True})
    write_outputs(Result(replaced), {"mlflow_run_id": "r3"})
    assert read_sidecar(request.output_path)["mlflow_run_id"] == "r3"


def test_an_output_whose_sidecar_fails_is_removed(store, monkeypatch) -> None:
    def refuse(source: Path, target: URI, overwrite: bool) -> None:
        if target.suffix == ".json":
            raise OSError(28, "No space left on device")
        store.put_file(str(source), target)

    monkeypatch.setattr("cosmos_pipeline.runner.write_sidecar", fake_sidecar)
    monkeypatch.setattr("cosmos_pipeline.runner.publish", refuse)
    request = GenerationRequest(prompt="a robot", output_path="memory://media/outputs/b.mp4", num_frames=5)
    with pytest.raises(OSError, match="No space"):
        write_outputs(Result(request))
    assert not store.exists("/media/outputs/b.mp4")


def fake_sidecar(result: Result, output_path: Path, extra: dict | None = None) -> Path:
    """The sidecar's shape without a generation's timings."""
    path = output_path.with_name(output_path.name + ".json")
    path.write_text(json.dumps({"request_key": result.request.key(), **(extra or {})}))
    return path


def test_a_bundle_in_the_store_is_checked_row_by_row_and_reused_when_done(store) -> None:
    store.pipe_file("/media/inputs/robot.png", IMAGE)
    rows = [
        {"name": "ok", "input_path": "robot.png", "prompt": "a robot", "seed": 1},
        {"name": "climbs", "input_path": "../../other/robot.png", "prompt": "a robot"},
        {"name": "other", "input_path": "memory://other/robot.png", "prompt": "a robot"},
    ]
    store.pipe_file("/media/inputs/batch.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    policy = Policy(input_roots=("memory://media/inputs",), output_root="memory://media/outputs")
    explicit = {
        "input_path": "memory://media/inputs/batch.jsonl",
        "height": 64,
        "width": 112,
        "num_frames": 5,
    }
    found = request_rows(explicit, output_dir=location("memory://media/outputs"), policy=policy)
    report = check_batch(found, policy)
    assert [(p.row, p.field) for p in report.problems] == [(2, "input_path"), (3, "policy")]
    assert "`..` in the key" in report.problems[0].message
    [ok] = [row.request for row in found if row.request is not None and row.request.name == "ok"]
    assert (
        ok.input_path == "memory://media/inputs/robot.png"
        and ok.output_path == "memory://media/outputs/ok.mp4"
    )
    assert check_batch(found[:1], policy).requests == [ok]  # the media checked from this host's cache
    store.pipe_file("/media/outputs/ok.mp4", b"video")
    store.pipe_file("/media/outputs/ok.mp4.json", json.dumps({"request_key": ok.key()}).encode())
    assert check_batch(found[:1], policy, skip_existing=True).reused == [ok]


def test_aws_credentials_are_masked_wherever_text_is_recorded() -> None:
    text = "AWS_ACCESS_KEY_ID=AKIAHOSTSTEST0000001 aws_secret_access_key=abc/DEF+ghi AWS_SESSION_TOKEN=xyz"
    assert scrub(text) == "AWS_ACCESS_KEY_ID=*** aws_secret_access_key=*** AWS_SESSION_TOKEN=***"
    assert "AKIAHOSTSTEST0000001" not in scrub("key AKIAHOSTSTEST0000001 in a message")
