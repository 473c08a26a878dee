import json
import re
from pathlib import Path

import pytest

from cosmos_pipeline.bundle import UPSTREAM_IGNORED_KEYS, read_bundle, request_rows
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.request import RESOLUTIONS

from .conftest import ASSETS, REPO, checked


def write_bundle(path: Path, entry: dict) -> Path:
    path.write_text(json.dumps(entry))
    return path


def resolve(tmp_path: Path, **cli) -> list:
    return checked({"output_path": str(tmp_path / "out"), **cli})


def test_bundle_paths_are_relative_to_the_bundle(tmp_path):
    [request] = resolve(tmp_path, input_path=str(ASSETS / "image2world.json"))
    assert request.input_path == ASSETS / "media" / "warehouse_robot.png"
    assert request.mode == "image2world" and request.name == "image2world_robot_arm"
    assert request.output_path == tmp_path / "out" / "image2world_robot_arm.mp4"


def test_bundle_negative_prompt_is_honoured(tmp_path):
    [request] = resolve(tmp_path, input_path=str(ASSETS / "image2world.json"))
    assert request.negative_prompt.startswith("The video is blurry")


def test_prompt_file_is_read_and_stripped(tmp_path):
    [request] = resolve(tmp_path, input_path=str(ASSETS / "prompt_file.json"))
    expected = (ASSETS / "prompts" / "night_street.txt").read_text().strip()
    assert request.prompt == expected and not request.prompt.startswith("\n")


def test_upstream_keys_are_accepted_and_seed_names_mapped(tmp_path):
    bundle = write_bundle(
        tmp_path / "b.json",
        {
            "name": "n",
            "inference_type": "text2world",
            "enable_autoregressive": False,
            "prompt": "p",
            "num_output_frames": 9,
            "num_steps": 4,
            "guidance": 3.5,
            "seed": 11,
            "resolution": "480,640",
        },
    )
    [request] = resolve(tmp_path, input_path=str(bundle))
    assert (request.num_frames, request.num_inference_steps, request.guidance_scale, request.seed) == (
        9,
        4,
        3.5,
        11,
    )
    assert (request.height, request.width) == (480, 640)  # NVIDIA's "height,width"
    bundle.write_text(json.dumps({"prompt": "p", "resolution": "none"}))  # NVIDIA's default: the model's size
    [request] = resolve(tmp_path, input_path=str(bundle))
    assert (request.height, request.width) == RESOLUTIONS["720p"]


def test_precedence_cli_over_bundle_over_default(tmp_path):
    bundle = write_bundle(tmp_path / "b.json", {"prompt": "bundle", "num_output_frames": 9, "seed": 1})
    [request] = resolve(tmp_path, input_path=str(bundle), prompt="cli", seed=2)
    assert (request.prompt, request.seed, request.num_frames) == ("cli", 2, 9)  # CLI, CLI, bundle
    assert request.num_inference_steps == 36  # default


def test_cli_prompt_file_beats_bundle_inline_prompt(tmp_path):
    (tmp_path / "p.txt").write_text("  from the file \n")
    bundle = write_bundle(tmp_path / "b.json", {"prompt": "bundle"})
    [request] = resolve(tmp_path, input_path=str(bundle), prompt_path=str(tmp_path / "p.txt"))
    assert request.prompt == "from the file"


def test_override_visual_input_replaces_bundle_media(tmp_path):
    [request] = resolve(
        tmp_path,
        input_path=str(ASSETS / "image2world.json"),
        override_visual_input=str(ASSETS / "media" / "rolling_ball.mp4"),
    )
    assert request.mode == "video2world"


def test_media_as_input_path_and_resolution_preset(tmp_path):
    [request] = resolve(
        tmp_path, input_path=str(ASSETS / "media" / "warehouse_robot.png"), prompt="p", resolution="480p"
    )
    assert request.mode == "image2world" and request.name == "warehouse_robot"
    assert (request.height, request.width) == RESOLUTIONS["480p"]
    [request] = resolve(tmp_path, prompt="p", resolution="480p", height=512)
    assert (request.height, request.width) == (512, RESOLUTIONS["480p"][1])  # explicit size beats the preset


def test_jsonl_bundle_gives_many_requests_with_their_own_outputs(tmp_path):
    requests = resolve(tmp_path, input_path=str(ASSETS / "batch.jsonl"))
    assert [r.mode for r in requests] == ["text2world", "image2world", "text2image"]
    assert [r.output_path.name for r in requests] == [
        "batch_warehouse.mp4",
        "batch_robot_arm.mp4",
        "batch_kitchen.png",
    ]
    with pytest.raises(InputError, match="names one file but the bundle holds 3 requests"):
        checked({"input_path": str(ASSETS / "batch.jsonl"), "output_path": str(tmp_path / "x.mp4")})


def test_same_output_twice_is_refused(tmp_path):
    bundle = tmp_path / "b.jsonl"
    bundle.write_text('{"name": "a", "prompt": "p"}\n{"name": "a", "prompt": "q"}\n')
    with pytest.raises(InputError, match=r"rows \[1, 2\] would all write"):
        resolve(tmp_path, input_path=str(bundle))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"prompt": "p", "num_output_frames": "many"}', "`num_output_frames`: Input should be a valid int"),
        ('{"prompt": 3}', "`prompt`"),
        ('{"prompt": "p", "input_path": 5}', "`input_path`: must be a path string, not 5"),
        ('{"prompt": ""}', "prompt is empty"),
        ('{"prompt": "p", "resolution": "999p"}', "unknown resolution"),
    ],
)
def test_bad_bundles_name_the_problem(tmp_path, content, message):
    bundle = tmp_path / "bad.json"
    bundle.write_text(content)
    with pytest.raises(InputError, match=message):
        resolve(tmp_path, input_path=str(bundle))


def test_missing_bundle_and_missing_media(tmp_path):
    with pytest.raises(InputError, match="bundle not found"):
        resolve(tmp_path, input_path=str(tmp_path / "nope.json"))
    bundle = write_bundle(tmp_path / "b.json", {"prompt": "p", "input_path": "missing.png"})
    with pytest.raises(InputError, match="missing.png"):
        resolve(tmp_path, input_path=str(bundle))


def test_read_bundle_skips_blank_jsonl_lines(tmp_path):
    bundle = tmp_path / "b.jsonl"
    bundle.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert [entry["prompt"] for entry in read_bundle(bundle)] == ["a", "b"]


def test_unknown_keys_name_the_nearest_known_key_row_by_row(tmp_path):
    bundle = tmp_path / "typos.jsonl"
    bundle.write_text(
        '{"prompt": "p", "num_ouput_frames": 9, "negativ_prompt": "x"}\n'
        '{"prompt": "fine", "inference_type": "text2world", "enable_autoregressive": true}\n'
        '{"promt": "p", "colour_grading": "warm"}\n'
    )
    rows = request_rows({"input_path": str(bundle), "output_path": str(tmp_path / "out")})
    problems = [{p.field: p.message for p in row.problems} for row in rows]
    assert problems[0] == {
        "negativ_prompt": "unknown key; did you mean `negative_prompt`?",
        "num_ouput_frames": "unknown key; did you mean `num_output_frames`?",
    }
    assert problems[1] == {} and rows[1].request is not None
    assert problems[2]["promt"] == "unknown key; did you mean `prompt`?" and "prompt" in problems[2]
    assert problems[2]["colour_grading"].startswith(
        "unknown key; the keys are `base_model_id`, `cfg_parallel`, `chunk_overlap`"
    )
    with pytest.raises(InputError, match=r"row 1: `negativ_prompt`: unknown key; did you mean"):
        resolve(tmp_path, input_path=str(bundle))


def test_unknown_override_is_refused_for_the_whole_batch(tmp_path):
    with pytest.raises(InputError, match=r"overrides: `guidence`: unknown key; did you mean `guidance`\?"):
        request_rows({"prompt": "p", "guidence": 3.0})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    bundle = tmp_path / "b.json"
    bundle.write_text(f'{{"prompt": "p", "guidance": {value}, "lora_scale": {value}}}')
    [row] = request_rows({"input_path": str(bundle), "output_path": str(tmp_path / "out")})
    assert {p.field: p.message.split(" (got")[0] for p in row.problems} == {
        "guidance_scale": "must be a finite number",
        "lora_scale": "must be a finite number",
    }


def test_readme_lists_the_ignored_upstream_keys():
    readme = (REPO / "README.md").read_text()
    [listed] = re.findall(r"accepted and ignored: ((?:`\w+`(?:, )?)+)\.", readme.replace("\n", " "))
    assert re.findall(r"`(\w+)`", listed) == list(UPSTREAM_IGNORED_KEYS)


def test_every_bad_line_of_a_batch_is_named(tmp_path):
    bundle = tmp_path / "b.jsonl"
    bundle.write_text('{"prompt": "a"}\n{not json\n[1]\n{"prompt": "b", "input_path": 5, "num_steps": 0}\n')
    with pytest.raises(
        InputError, match=r"b.jsonl:2 is not valid JSON: .*; bundle .*b.jsonl:3 must hold a JSON"
    ):
        read_bundle(bundle)
    bundle.write_text(
        '{"prompt": "a", "input_path": ["x.png"]}\n{"prompt": "b", "input_path": 5, "num_steps": 0}\n'
    )
    rows = request_rows({"input_path": str(bundle), "output_path": str(tmp_path / "out")})
    assert [[p.field for p in row.problems] for row in rows] == [
        ["input_path"],
        ["input_path", "num_inference_steps"],
    ]
    assert rows[1].problems[0].message == "must be a path string, not 5"
