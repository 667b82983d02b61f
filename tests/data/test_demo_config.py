"""configs/demo.yaml reads what `findlit data synth` writes: every dataset, every record, no problem."""

from pathlib import Path

import pytest
import yaml

from findlit.cli import main
from findlit.data.synthetic import generate
from tests.fixtures import REPO


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    generate(folder / "data", train=12, val=6, size=128, seed=0, test=6)
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["data"]["root"] = str(folder / "data")
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_data_check_passes_on_generated_data(demo_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "--config", str(demo_config)]) == 0
    output = capsys.readouterr().out
    assert "no problems found" in output
    # choices are made on val, results reported on test: the two sections read different images
    config = yaml.safe_load(demo_config.read_text())["data"]
    val_files = {yaml.safe_dump(entry["paths"]) for entry in config["val"]}
    assert not any(yaml.safe_dump(entry["paths"]) in val_files for entry in config["test"])
    assert all("test" in str(entry["paths"]) for entry in config["test"])
    rows = {line.split()[1]: line.split()[2:] for line in output.splitlines() if line.startswith("data.")}
    assert set(rows) == {
        "demo_panoptic",
        "demo_captions",
        "demo_refs",
        "demo_entities",
        "demo_instances",
        "demo_refs_absent",
        "demo_interactive",
    }
    # every configured dataset has images and the task's annotations
    for name, (task, images, segments, captions, refs, *_rest) in rows.items():
        assert int(images) > 0, name
        if task == "retrieval":
            assert int(captions) == 5 * int(images), name
        elif task == "grounding":
            assert int(refs) > 0, name
        else:
            assert int(segments) > 0, name


def test_train_loader_on_generated_data(demo_config: Path) -> None:
    from findlit.cli.config import build_datamodule, load_data_section

    data = load_data_section([str(demo_config)])
    data.update(num_workers=0, steps_per_epoch=6)
    datamodule = build_datamodule(data)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 6
    for batch in batches:
        assert batch["images"].shape[0] == len(batch["targets"]) == len(batch["image_ids"])
        # demo.yaml resizes and crops to at most 256 px (the generated images here are 128 px)
        assert batch["images"].shape[-1] <= 256 and batch["images"].shape[-2] <= 256
