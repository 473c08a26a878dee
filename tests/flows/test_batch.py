"""Batches through the command line and the generate flow: a .jsonl bundle or a folder of bundles,
--keep-going, --skip-existing, and the sidecar beside every output."""

import json
import shutil

import pytest

from cosmos_pipeline import cli, loading
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.sidecar import read_sidecar
from flows import cli as flows_cli
from tests.conftest import ASSETS, TINY_ARGS

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def tracking(monkeypatch, tracked):
    for key in ("tracking_uri", "artifact_root", "experiment"):
        monkeypatch.setenv(f"COSMOS_{key.upper()}", tracked[key])
    return tracked


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_keep_going_runs_past_a_failing_request_and_reports_it(tmp_path, capsys, monkeypatch):
    bundle = write_jsonl(tmp_path / "b.jsonl", [
        {"name": "ok1", "prompt": "a", "num_output_frames": 5, "seed": 1},
        {"name": "boom", "prompt": "b", "num_output_frames": 5, "seed": 2},
        {"name": "ok2", "prompt": "c", "num_output_frames": 5, "seed": 3},
    ])  # fmt: skip
    from cosmos_pipeline import generate

    real = generate.generate

    def failing(pipe, request, *args, **kwargs):
        if request.name == "boom":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(pipe, request, *args, **kwargs)

    monkeypatch.setattr(generate, "generate", failing)
    out = tmp_path / "out"
    code = flows_cli.run([*TINY_ARGS, "--input_path", str(bundle), "--output_path", str(out), "--keep-going"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE
    assert "1 of 3 request(s) failed" in err and "boom: RuntimeError: CUDA out of memory" in err
    assert sorted(p.name for p in out.iterdir()) == ["ok1.mp4", "ok1.mp4.json", "ok2.mp4", "ok2.mp4.json"]


def test_without_keep_going_the_batch_stops_at_the_failure(tmp_path, monkeypatch):
    bundle = write_jsonl(
        tmp_path / "b.jsonl", [{"name": "boom", "prompt": "b"}, {"name": "ok", "prompt": "c"}]
    )
    from cosmos_pipeline import generate

    monkeypatch.setattr(generate, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    out = tmp_path / "out"
    assert (
        flows_cli.run(
            [*TINY_ARGS, "--input_path", str(bundle), "--output_path", str(out), "--num_output_frames", "5"]
        )
        == 1
    )
    assert not out.exists() or not any(out.iterdir())


def test_skip_existing_regenerates_nothing_on_a_rerun(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "bundles"
    folder.mkdir()
    shutil.copy(ASSETS / "text2world.json", folder / "a.json")
    write_jsonl(
        folder / "b.jsonl",
        [{"name": "no_seed", "prompt": "a ball"}, {"name": "seeded", "prompt": "x", "seed": 4}],
    )
    out = tmp_path / "out"
    args = [*TINY_ARGS, "--input_path", str(folder), "--output_path", str(out), "--num_output_frames", "5"]
    assert flows_cli.run(args) == 0
    outputs = sorted(out.glob("*.mp4"))
    assert [p.name for p in outputs] == ["no_seed.mp4", "seeded.mp4", "text2world_warehouse.mp4"]
    stamps = {p: p.stat().st_mtime_ns for p in outputs}

    loads = []
    monkeypatch.setattr(loading, "load_pipeline", lambda key: loads.append(key))
    assert flows_cli.run([*args, "--skip-existing"]) == 0
    assert "nothing to do: all 3 request(s) already have their output" in capsys.readouterr().out
    assert loads == [] and {p: p.stat().st_mtime_ns for p in outputs} == stamps

    # A changed request is not "the same": without --overwrite it is refused before any load.
    assert flows_cli.run([*args, "--skip-existing", "--num_steps", "3"]) == cli.EXIT_INPUT


def test_sidecar_explains_the_output(tmp_path):
    out = tmp_path / "clip.mp4"
    assert (
        flows_cli.run(
            [*TINY_ARGS, "--prompt", "a robot", "--num_output_frames", "5", "--output_path", str(out)]
        )
        == 0
    )
    record = read_sidecar(out)
    request = GenerationRequest(**record["request"])
    assert request.output_path == out and request.model_id == "embedded:tiny"
    assert record["seed"] == request.seed and request.seed_chosen is True
    assert record["request_key"] == request.model_copy(update={"dtype": "auto"}).key()  # as asked
    assert (request.device, request.dtype) == ("cpu", "float32")  # as it ran
    assert record["revision"] == "diffusers/base/post-trained" and record["guardrail"] is False
    assert record["adapter"] is None and record["mode"] == "text2world" and record["mlflow_run_id"]
    assert len(record["timings"]["steps_s"]) == 2 and record["timings"]["total_s"] > 0
    assert set(record["versions"]) == {"cosmos_pipeline", "diffusers", "torch"}


def test_request_key_ignores_placement_and_a_drawn_seed(tmp_path):
    base = GenerationRequest(prompt="p", output_path=tmp_path / "a.mp4")
    assert base.key() == base.model_copy(update={"output_path": tmp_path / "b.mp4", "device": "cuda:1"}).key()
    assert base.with_seed().key() == base.key()  # a drawn seed is not part of the identity
    assert base.model_copy(update={"seed": 5}).key() != base.key()
    assert base.model_copy(update={"prompt": "q"}).key() != base.key()


def test_speed_flags_reach_the_generation_and_its_record(tmp_path):
    out = tmp_path / "fast.mp4"
    args = [*TINY_ARGS, "--prompt", "a robot", "--num_output_frames", "5", "--output_path", str(out)]
    assert flows_cli.run([*args, "--acceleration", "fast", "--num_steps", "4"]) == 0
    record = read_sidecar(out)
    assert record["acceleration"]["guidance_interval"] == [0.25, 0.75]
    assert record["forwards"] < 2 * 4  # fewer transformer forwards than full CFG on every step
