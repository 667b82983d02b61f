"""The ``findlit`` command: version, ``data check`` exit codes and config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import findlit
from findlit.cli import main
from findlit.data.check import COUNTED, PREDICT_COUNTED
from tests.fixtures import COCO_SAMPLE, REPO, copy_sample

SAMPLE = COCO_SAMPLE
SAMPLE_CONFIG = "configs/coco_sample.yaml"
PREDICT_CONFIG = "configs/predict/coco_sample.yaml"


def write_yaml(path: Path, content: object) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def sample_config() -> dict:
    return yaml.safe_load((REPO / SAMPLE_CONFIG).read_text())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------
# version and usage


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, out, _ = run(capsys, flag)
    assert code == 0
    assert out.strip() == f"findlit {findlit.__version__}"


@pytest.mark.parametrize("argv", [[], ["fit"], ["--help-me"]], ids=["nothing", "fit", "unknown"])
def test_usage_without_data_subcommand(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: findlit data" in err


def test_check_without_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["data", "check"])
    assert caught.value.code == 2
    assert "config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# findlit data check on the real sample


def test_check_sample_config_from_repo_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, out, err = run(capsys, "data", "check", "--config", SAMPLE_CONFIG)
    assert code == 0, out + err
    assert "no problems found" in out
    for index, name in enumerate(["sample_panoptic", "sample_instances", "sample_captions", "sample_refs"]):
        assert f"data.val[{index}] {name}" in out
    assert "data.val[4] sample_entities" in out


def test_check_one_stage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = run(capsys, "data", "check", "--config", SAMPLE_CONFIG, "--stage", "val")
    assert code == 0
    assert "no problems found" in out


@pytest.mark.parametrize("stage", ["train", "predict"])
def test_check_stage_without_datasets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    monkeypatch.chdir(REPO)
    code, _, err = run(capsys, "data", "check", "--config", SAMPLE_CONFIG, "--stage", stage)
    assert code == 2
    assert f"no datasets configured for stage {stage}" in err


def test_check_unknown_stage_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as caught:
        main(["data", "check", "--config", SAMPLE_CONFIG, "--stage", "vall"])
    assert caught.value.code == 2
    assert "vall" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# findlit data check on data.predict: the images of each entry, its prompts and class names


def counts_of(out: str, label: str) -> dict[str, int]:
    """The counts of the report row of ``label`` (``"<key> <name>"``) in a table with predict columns."""
    [line] = [line for line in out.splitlines() if line.startswith(f"{label} ")]
    columns = [*COUNTED, *PREDICT_COUNTED, "bad records"]
    return dict(zip(columns, map(int, line.split()[3:]), strict=True))


def predict_config(folder: Path, **fields: object) -> Path:
    """An experiment of the COCO sample whose ``data.predict`` entry reads the photos of ``folder``."""
    config = sample_config()
    config["data"]["root"] = str(SAMPLE.resolve())
    entry = {"name": "photos", "root": str(folder), "images": ["val2017"], "prompts": ["the sky"]}
    config["data"]["predict"] = [entry | fields]
    return write_yaml(folder.parent / "exp.yaml", config)


def test_check_reports_the_predict_entries_with_the_other_datasets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, out, err = run(capsys, "data", "check", "--config", SAMPLE_CONFIG, "--config", PREDICT_CONFIG)
    assert code == 0, out + err
    assert "no problems found" in out
    assert "data.val[0] sample_panoptic" in out
    # the two real photos, the partial's 2 prompts and 4 + 3 class names
    counts = counts_of(out, "data.predict[0] coco_sample")
    assert counts["images"] == 2 and counts["bad records"] == 0
    assert counts["prompts"] == 2 and counts["class names"] == 7


def test_check_only_predict_on_the_demo_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--stage predict reads no annotation: the demo's generated data need not exist."""
    monkeypatch.chdir(REPO)
    argv = (
        "data",
        "check",
        "--config",
        "configs/demo.yaml",
        "--config",
        PREDICT_CONFIG,
        "--stage",
        "predict",
    )
    code, out, err = run(capsys, *argv)
    assert code == 0, out + err
    assert counts_of(out, "data.predict[0] coco_sample")["images"] == 2
    assert "data.train" not in out and "data.val" not in out


def test_check_names_missing_and_unreadable_predict_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_sample(tmp_path)
    broken = root / "val2017" / "000000142238.jpg"
    broken.write_bytes(b"not a jpeg")
    config = predict_config(root, images=["val2017", "nowhere.jpg", "no_folder"])
    code, out, _ = run(capsys, "data", "check", "--config", str(config), "--stage", "predict")
    assert code == 1
    assert f"data.predict[0].images[1]: no such file or folder: {root / 'nowhere.jpg'}" in out
    assert f"data.predict[0].images[2]: no such file or folder: {root / 'no_folder'}" in out
    assert f"[file {broken}; set by config key 'data.predict[0].images']" in out
    counts = counts_of(out, "data.predict[0] photos")
    assert counts["images"] == 1 and counts["bad records"] == 1
    assert "3 problem(s)" in out


def test_check_names_a_predict_entry_without_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_sample(tmp_path)
    code, out, _ = run(capsys, "data", "check", "--config", str(predict_config(root, images=["annotations"])))
    assert code == 1
    assert f"data.predict[0].images[0]: folder {root / 'annotations'} holds no image file" in out
    assert counts_of(out, "data.predict[0] photos")["images"] == 0


def test_check_refuses_an_empty_predict_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = predict_config(copy_sample(tmp_path), prompts=[])
    code, out, err = run(capsys, "data", "check", "--config", str(config))
    assert code == 2
    assert "findlit: config error: data.predict[0].prompts: nothing to predict" in err
    assert not out  # refused with the config, before any dataset is read


def test_check_data_section_with_init_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = sample_config()["data"]
    data["root"] = str(SAMPLE.resolve())
    config = write_yaml(
        tmp_path / "exp.yaml",
        {"data": {"class_path": "findlit.data.datamodule.MultiTaskDataModule", "init_args": data}},
    )
    code, out, err = run(capsys, "data", "check", "--config", str(config))
    assert code == 0, out + err


def test_later_config_overrides_earlier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_sample(tmp_path)
    (root / "annotations" / "captions_val2017.json").unlink()
    override = write_yaml(tmp_path / "override.yaml", {"data": {"root": str(root)}})
    code, out, _ = run(
        capsys, "data", "check", "--config", str(REPO / SAMPLE_CONFIG), "--config", str(override)
    )
    assert code == 1
    assert "captions_val2017.json" in out
    assert "data.val[2].paths.captions_json" in out


# ---------------------------------------------------------------------------------------------------
# config errors: exit code 2 and a message naming the file or key


def test_config_file_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, _, err = run(capsys, "data", "check", "--config", str(missing))
    assert code == 2
    assert "config error" in err
    assert str(missing) in err


def test_unknown_key_under_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample_config()
    config["data"]["vall"] = config["data"].pop("val")
    path = write_yaml(tmp_path / "exp.yaml", config)
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "vall" in err


def test_unknown_key_under_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample_config()
    paths = config["data"]["val"][0]["paths"]
    paths["image_rot"] = paths.pop("image_root")
    path = write_yaml(tmp_path / "exp.yaml", config)
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "image_rot" in err


def test_unknown_format_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample_config()
    config["data"]["val"][0]["format"] = "coco_panoptik"
    path = write_yaml(tmp_path / "exp.yaml", config)
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "coco_panoptik" in err


def test_duplicate_dataset_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample_config()
    config["data"]["val"][1]["name"] = config["data"]["val"][0]["name"]
    path = write_yaml(tmp_path / "exp.yaml", config)
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "sample_panoptic" in err


def test_no_data_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", {"trainer": {"max_steps": 1}})
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "no 'data' section" in err
    assert str(path) in err


@pytest.mark.parametrize(
    "text",
    ["data:\n  root: [unclosed\n", "data:\n\troot: x\n", "data: 1\ndata: 2\n", "- a\n- b\n"],
    ids=["unclosed-flow", "tab-indent", "duplicate-key", "top-level-list"],
)
def test_unparsable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert str(path) in err


def test_unresolvable_interpolation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  root: ${oops}\n  val: []\n")
    code, _, err = run(capsys, "data", "check", "--config", str(path))
    assert code == 2
    assert "oops" in err


def test_missing_required_path_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample_config()
    config["data"]["root"] = str(SAMPLE.resolve())
    del config["data"]["val"][0]["paths"]["panoptic_root"]
    path = write_yaml(tmp_path / "exp.yaml", config)
    code, out, _ = run(capsys, "data", "check", "--config", str(path))
    assert code == 1
    assert "data.val[0].paths.panoptic_root is required" in out


# ---------------------------------------------------------------------------------------------------
# the real command, end to end


def _findlit(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "findlit", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_console_script_clean_sample() -> None:
    result = _findlit("data", "check", "--config", SAMPLE_CONFIG, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout


def test_console_script_bad_sample(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    (root / "val2017" / "000000142238.jpg").write_bytes(b"not a jpeg")
    config = sample_config()
    config["data"]["root"] = str(root)
    path = write_yaml(tmp_path / "exp.yaml", config)
    result = _findlit("data", "check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "000000142238.jpg" in result.stdout
    assert "image_id=142238" in result.stdout
    assert "Traceback" not in result.stderr


def test_console_script_missing_config(tmp_path: Path) -> None:
    result = _findlit("data", "check", "--config", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere.yaml" in result.stderr
    assert "Traceback" not in result.stderr
