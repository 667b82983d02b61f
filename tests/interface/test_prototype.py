"""The prototype compiler: FIND's default table, compiled masks per task, config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from findlit.errors import ConfigError
from findlit.interface import FEATURES, Prototype, TypeName, TypeRule, default_prototype

ROOT = Path(__file__).resolve().parents[2]

OBJECT = "proposals.vision.object"
GROUNDING = "proposals.vision.grounding"
SEGMENT = "proposals.vision.segment"
ENTITY = "proposals.interleave.entity"
IMAGE = "queries.vision.image"


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# ---------------------------------------------------------------- FIND's default table (DESIGN.md)

# One entry per row of the table in DESIGN.md ("FIND's default prototype"), rows with {a,b}
# expanded: (self-attends to, cross-attends to, cross_masked, output, init_from).
FIND_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool, bool, str | None]] = {
    OBJECT: ((OBJECT,), (FEATURES,), True, True, None),
    GROUNDING: ((GROUNDING, "tokens.language.description"), (FEATURES,), True, True, OBJECT),
    SEGMENT: (
        (SEGMENT, "tokens.vision.spatial", "memories.vision.spatial"),
        (FEATURES,),
        True,
        True,
        OBJECT,
    ),
    ENTITY: ((ENTITY, "tokens.interleave.legend"), (FEATURES,), True, True, OBJECT),
    IMAGE: ((IMAGE,), (FEATURES,), False, True, None),
    "queries.vision.spatial": (("queries.vision.spatial",), ("tokens.vision.spatial",), False, True, IMAGE),
    "queries.language.caption": (
        ("queries.language.caption",),
        ("tokens.language.caption",),
        False,
        True,
        IMAGE,
    ),
    "queries.language.class": (("queries.language.class",), ("tokens.language.class",), False, True, IMAGE),
    "queries.language.description": (
        ("queries.language.description",),
        ("tokens.language.description",),
        False,
        True,
        IMAGE,
    ),
    "queries.interleave.legend": (
        ("queries.interleave.legend",),
        ("tokens.interleave.legend",),
        False,
        True,
        IMAGE,
    ),
    "queries.interleave.entity": (
        ("queries.interleave.entity",),
        ("tokens.interleave.legend",),
        False,
        True,
        IMAGE,
    ),
    "tokens.language.description": ((GROUNDING, "tokens.language.description"), (), False, False, None),
    "tokens.vision.spatial": (("tokens.vision.spatial",), (), False, False, None),
    "tokens.vision.spatial_": (("tokens.vision.spatial_",), (), False, False, None),
    "tokens.language.caption": (("tokens.language.caption",), (), False, False, None),
    "tokens.language.class": (("tokens.language.class",), (), False, False, None),
    "tokens.interleave.legend": (
        ("tokens.interleave.legend",),
        ("tokens.vision.spatial_",),
        False,
        False,
        None,
    ),
    "memories.vision.spatial": (("memories.vision.spatial",), (FEATURES,), False, True, None),
}


def test_default_prototype_declares_exactly_the_table_types() -> None:
    assert set(default_prototype().types) == set(FIND_TABLE)


@pytest.mark.parametrize("name", sorted(FIND_TABLE))
def test_default_prototype_row(name: str) -> None:
    self_attend, cross_attend, masked, output, init_from = FIND_TABLE[name]
    rule = default_prototype().types[name]
    assert set(rule.self_attend) == set(self_attend)
    assert len(rule.self_attend) == len(self_attend)
    assert rule.cross_attend == cross_attend
    assert rule.reads_features == (FEATURES in cross_attend)
    assert rule.cross_masked is masked
    assert rule.output is output
    assert rule.init_from == init_from


def test_default_prototype_kinds_rules() -> None:
    prototype = default_prototype()
    # tokens are never outputs; every proposal but object starts as object; every query but image as image
    for name, rule in prototype.types.items():
        kind = TypeName.parse(name, "k").kind
        if kind == "tokens":
            assert not rule.output
        if kind == "proposals":
            assert rule.init_from == (None if name == OBJECT else OBJECT)
        if kind == "queries":
            assert rule.init_from == (None if name == IMAGE else IMAGE)
    assert prototype.init_from[GROUNDING] == OBJECT
    assert prototype.init_from["queries.interleave.entity"] == IMAGE
    # only the image query and memories read the image features unmasked
    unmasked = {
        name for name, rule in prototype.types.items() if rule.reads_features and not rule.cross_masked
    }
    assert unmasked == {IMAGE, "memories.vision.spatial"}


def test_default_yaml_in_configs_equals_package_data() -> None:
    shipped = ROOT / "src/findlit/interface/prototypes/find_default.yaml"
    configs = ROOT / "configs/prototypes/find_default.yaml"
    assert configs.read_text() == shipped.read_text()
    assert Prototype.from_yaml(configs) == default_prototype()


def test_package_data_declared() -> None:
    assert "interface/prototypes/*.yaml" in (ROOT / "pyproject.toml").read_text()


def test_canonical_order_is_by_kind_then_declaration() -> None:
    order = default_prototype().canonical_order
    assert order[:5] == (OBJECT, GROUNDING, SEGMENT, ENTITY, IMAGE)
    assert order[-1] == "memories.vision.spatial"
    assert order.index("tokens.vision.spatial") > order.index("queries.interleave.entity")


# ---------------------------------------------------------------- compiled masks per task


def test_generic_segmentation_masks() -> None:
    # class names are prompts: each class query reads only its own class's tokens (groups)
    sizes: dict[str, Any] = {
        IMAGE: 1,
        "tokens.language.class": torch.tensor([3, 2]),
        OBJECT: 2,
        "queries.language.class": 2,
    }
    groups = {
        "queries.language.class": torch.tensor([[0, 1], [0, 1]]),
        "tokens.language.class": torch.tensor([[0, 0, 1], [0, 1, -1]]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2, groups=groups)

    assert compiled.order == (OBJECT, IMAGE, "queries.language.class", "tokens.language.class")
    assert compiled.slices == {
        OBJECT: slice(0, 2),
        IMAGE: slice(2, 3),
        "queries.language.class": slice(3, 5),
        "tokens.language.class": slice(5, 8),
    }
    assert compiled.length == 8 and compiled.num_tokens == 3
    assert torch.equal(compiled.valid, t([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]))
    # independent prompts: a class's query and tokens see no other class's (ids differ)
    expected_self = t(
        [
            [
                [1, 1, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 1, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 0, 0, 0],
                [0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 1],
            ],
            [
                [1, 1, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 1, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 0, 0, 0],
                [0, 0, 0, 0, 0, 1, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 1],
            ],
        ]
    )
    assert torch.equal(compiled.self_mask, expected_self)
    assert compiled.token_order == ("tokens.language.class",)
    assert compiled.token_slices == {"tokens.language.class": slice(0, 3)}
    assert compiled.token_positions.tolist() == [5, 6, 7]
    expected_cross = t(
        [
            [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)
    assert torch.equal(compiled.reads_tokens, t([0, 0, 0, 1, 1, 0, 0, 0]))
    assert torch.equal(compiled.reads_features, t([1, 1, 1, 0, 0, 0, 0, 0]))
    assert torch.equal(compiled.features_masked, t([1, 1, 0, 0, 0, 0, 0, 0]))
    assert compiled.outputs == (OBJECT, IMAGE, "queries.language.class")
    assert compiled.counts["tokens.language.class"].tolist() == [3, 2]


def test_generic_segmentation_without_groups_reads_all_class_tokens() -> None:
    sizes: dict[str, Any] = {"queries.language.class": 2, "tokens.language.class": torch.tensor([3, 2])}
    compiled = default_prototype().compile(sizes, batch_size=2)
    expected_cross = t(
        [
            [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)


def test_grounding_masks() -> None:
    sizes: dict[str, Any] = {
        OBJECT: 2,
        GROUNDING: 2,
        "tokens.language.description": torch.tensor([3, 2]),
        "queries.language.description": torch.tensor([2, 1]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)

    assert compiled.order == (
        OBJECT,
        GROUNDING,
        "queries.language.description",
        "tokens.language.description",
    )
    assert compiled.slices == {
        OBJECT: slice(0, 2),
        GROUNDING: slice(2, 4),
        "queries.language.description": slice(4, 6),
        "tokens.language.description": slice(6, 9),
    }
    assert torch.equal(compiled.valid, t([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1, 1, 0]]))
    expected_self = t(
        [
            [
                [1, 1, 0, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 1, 1, 1],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 1, 1, 1],
            ],
            [
                [1, 1, 0, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 1, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 1, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 0],
                [0, 0, 1, 1, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 0, 1],
            ],
        ]
    )
    assert torch.equal(compiled.self_mask, expected_self)
    assert compiled.token_order == ("tokens.language.description",)
    expected_cross = t(
        [
            [
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
            ],
            [
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
                [1, 1, 0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
            ],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)
    assert torch.equal(compiled.reads_features, t([1, 1, 1, 1, 0, 0, 0, 0, 0]))
    assert torch.equal(compiled.features_masked, t([1, 1, 1, 1, 0, 0, 0, 0, 0]))
    assert compiled.outputs == (OBJECT, GROUNDING, "queries.language.description")
    assert compiled.init_from[GROUNDING] == OBJECT


def test_retrieval_masks() -> None:
    sizes: dict[str, Any] = {
        IMAGE: 1,
        "queries.language.caption": 2,
        "tokens.language.caption": torch.tensor([3, 2]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)

    assert compiled.order == (IMAGE, "queries.language.caption", "tokens.language.caption")
    assert compiled.slices == {
        IMAGE: slice(0, 1),
        "queries.language.caption": slice(1, 3),
        "tokens.language.caption": slice(3, 6),
    }
    assert torch.equal(compiled.valid, t([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]))
    expected_self = t(
        [
            [
                [1, 0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 0, 0, 1, 1, 1],
                [0, 0, 0, 1, 1, 1],
                [0, 0, 0, 1, 1, 1],
            ],
            [
                [1, 0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 0, 0, 1, 1, 0],
                [0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 1],
            ],
        ]
    )
    assert torch.equal(compiled.self_mask, expected_self)
    expected_cross = t(
        [
            [[0, 0, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)
    assert torch.equal(compiled.reads_features, t([1, 0, 0, 0, 0, 0]))
    assert torch.equal(compiled.features_masked, t([0, 0, 0, 0, 0, 0]))
    assert compiled.outputs == (IMAGE, "queries.language.caption")
    assert compiled.init_from["queries.language.caption"] == IMAGE


def test_interleave_masks() -> None:
    sizes: dict[str, Any] = {
        ENTITY: 2,
        "queries.interleave.legend": 2,
        "queries.interleave.entity": 2,
        "tokens.interleave.legend": torch.tensor([3, 2]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)

    assert compiled.order == (
        ENTITY,
        "queries.interleave.legend",
        "queries.interleave.entity",
        "tokens.interleave.legend",
    )
    assert compiled.slices == {
        ENTITY: slice(0, 2),
        "queries.interleave.legend": slice(2, 4),
        "queries.interleave.entity": slice(4, 6),
        "tokens.interleave.legend": slice(6, 9),
    }
    assert torch.equal(compiled.valid, t([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0]]))
    expected_self = t(
        [
            [
                [1, 1, 0, 0, 0, 0, 1, 1, 1],
                [1, 1, 0, 0, 0, 0, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 1, 1],
                [0, 0, 0, 0, 0, 0, 1, 1, 1],
                [0, 0, 0, 0, 0, 0, 1, 1, 1],
            ],
            [
                [1, 1, 0, 0, 0, 0, 1, 1, 0],
                [1, 1, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 1, 1, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 0, 1],
            ],
        ]
    )
    assert torch.equal(compiled.self_mask, expected_self)
    assert compiled.token_order == ("tokens.interleave.legend",)
    expected_cross = t(
        [
            [
                [0, 0, 0],
                [0, 0, 0],
                [1, 1, 1],
                [1, 1, 1],
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
            ],
            [
                [0, 0, 0],
                [0, 0, 0],
                [1, 1, 0],
                [1, 1, 0],
                [1, 1, 0],
                [1, 1, 0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
            ],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)
    # legend tokens read visual-prompt tokens, absent here: they read no tokens in this batch
    assert torch.equal(compiled.reads_tokens, t([0, 0, 1, 1, 1, 1, 0, 0, 0]))
    assert torch.equal(compiled.reads_features, t([1, 1, 0, 0, 0, 0, 0, 0, 0]))
    assert torch.equal(compiled.features_masked, t([1, 1, 0, 0, 0, 0, 0, 0, 0]))
    assert compiled.outputs == (ENTITY, "queries.interleave.legend", "queries.interleave.entity")
    assert compiled.init_from[ENTITY] == OBJECT
    assert compiled.init_from["queries.interleave.legend"] == IMAGE


def test_legend_tokens_read_visual_prompt_tokens() -> None:
    sizes: dict[str, Any] = {
        "tokens.interleave.legend": 2,
        "tokens.vision.spatial_": torch.tensor([1, 2]),
        "queries.interleave.legend": 1,
    }
    compiled = default_prototype().compile(sizes, batch_size=2)
    assert compiled.order == (
        "queries.interleave.legend",
        "tokens.vision.spatial_",
        "tokens.interleave.legend",
    )
    assert compiled.token_order == ("tokens.vision.spatial_", "tokens.interleave.legend")
    assert compiled.token_slices == {
        "tokens.vision.spatial_": slice(0, 2),
        "tokens.interleave.legend": slice(2, 4),
    }
    assert compiled.token_positions.tolist() == [1, 2, 3, 4]
    expected_cross = t(
        [
            [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]],
            [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]],
        ]
    )
    assert torch.equal(compiled.cross_tokens, expected_cross)
    sequence = torch.arange(2 * 5, dtype=torch.float).reshape(2, 5, 1)
    assert compiled.tokens(sequence)[..., 0].tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]


# ---------------------------------------------------------------- split, layout details


def test_split_returns_output_slices() -> None:
    sizes: dict[str, Any] = {
        OBJECT: 2,
        GROUNDING: 2,
        "tokens.language.description": torch.tensor([3, 2]),
        "queries.language.description": torch.tensor([2, 1]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)
    sequence = torch.arange(2 * 9 * 2, dtype=torch.float).reshape(2, 9, 2)
    parts = compiled.split(sequence)
    assert list(parts) == [OBJECT, GROUNDING, "queries.language.description"]  # tokens are not outputs
    assert torch.equal(parts[OBJECT], sequence[:, 0:2])
    assert torch.equal(parts[GROUNDING], sequence[:, 2:4])
    assert torch.equal(parts["queries.language.description"], sequence[:, 4:6])
    assert parts["queries.language.description"].shape == (2, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        compiled.split(sequence[:, :8])


def test_absent_types_are_not_laid_out() -> None:
    sizes: dict[str, Any] = {
        IMAGE: 1,
        "queries.language.caption": 0,
        "tokens.language.caption": torch.tensor([0, 0]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)
    assert compiled.order == (IMAGE,)
    assert compiled.num_tokens == 0
    assert compiled.cross_tokens.shape == (2, 1, 0)
    assert torch.equal(compiled.self_mask, t([[[1]], [[1]]]))


def test_zero_count_in_one_sample_is_padding() -> None:
    sizes: dict[str, Any] = {IMAGE: 1, "queries.language.caption": torch.tensor([0, 1])}
    compiled = default_prototype().compile(sizes, batch_size=2)
    assert torch.equal(compiled.valid, t([[1, 0], [1, 1]]))
    assert torch.equal(compiled.self_mask, t([[[1, 0], [0, 1]], [[1, 0], [0, 1]]]))


def test_every_row_has_a_key_and_padding_columns_are_masked() -> None:
    sizes: dict[str, Any] = {
        OBJECT: torch.tensor([1, 3]),
        GROUNDING: torch.tensor([2, 0]),
        "tokens.language.description": torch.tensor([0, 4]),
        "queries.language.description": torch.tensor([2, 1]),
    }
    compiled = default_prototype().compile(sizes, batch_size=2)
    assert bool(compiled.self_mask.any(dim=-1).all())
    padded_columns = ~compiled.valid[:, None, :] & compiled.self_mask
    padded_rows_only_self = torch.eye(compiled.length, dtype=torch.bool)[None] & ~compiled.valid[:, :, None]
    assert torch.equal(padded_columns, padded_rows_only_self)


def test_compile_rejects_bad_sizes() -> None:
    prototype = default_prototype()
    with pytest.raises(ValueError, match=r"queries\.vision\.nothing"):
        prototype.compile({"queries.vision.nothing": 1}, batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        prototype.compile({IMAGE: torch.tensor([1, 1, 1])}, batch_size=2)
    with pytest.raises(ValueError, match="negative"):
        prototype.compile({IMAGE: -1}, batch_size=2)
    with pytest.raises(ValueError, match="no embedding type"):
        prototype.compile({IMAGE: 0}, batch_size=2)


# ---------------------------------------------------------------- config errors name the key


def minimal() -> dict[str, Any]:
    return {
        IMAGE: {"self_attend": [IMAGE], "cross_attend": ["features"], "output": True},
        "queries.language.caption": {
            "self_attend": ["queries.language.caption"],
            "cross_attend": ["tokens.language.caption"],
            "output": True,
            "init_from": IMAGE,
        },
        "tokens.language.caption": {"self_attend": ["tokens.language.caption"]},
    }


def test_minimal_prototype_is_valid() -> None:
    prototype = Prototype.from_dict(minimal())
    assert prototype.types["tokens.language.caption"] == TypeRule(self_attend=("tokens.language.caption",))
    assert prototype.outputs == (IMAGE, "queries.language.caption")


def test_unknown_kind_is_named() -> None:
    config = minimal()
    config["widgets.vision.thing"] = {"self_attend": ["widgets.vision.thing"]}
    with pytest.raises(ConfigError, match=r"prototype\.widgets\.vision\.thing: .*unknown kind 'widgets'"):
        Prototype.from_dict(config)


def test_unknown_kind_in_reference_is_named() -> None:
    config = minimal()
    config[IMAGE]["self_attend"] = [IMAGE, "widgets.vision.thing"]
    with pytest.raises(
        ConfigError, match=r"prototype\.queries\.vision\.image\.self_attend\[1\]: .*unknown kind"
    ):
        Prototype.from_dict(config)


def test_undeclared_reference_is_named() -> None:
    config = minimal()
    config["queries.language.caption"]["cross_attend"] = ["tokens.language.missing"]
    with pytest.raises(
        ConfigError,
        match=r"prototype\.queries\.language\.caption\.cross_attend\[0\]: .*tokens\.language\.missing",
    ):
        Prototype.from_dict(config)


def test_output_with_no_path_to_an_input_is_named() -> None:
    config = minimal()
    config["queries.language.caption"]["cross_attend"] = []
    with pytest.raises(
        ConfigError, match=r"prototype\.queries\.language\.caption: an output type with no path"
    ):
        Prototype.from_dict(config)


def test_output_reading_an_input_through_another_type_is_valid() -> None:
    config = minimal()
    config["queries.language.caption"]["cross_attend"] = []
    config["queries.language.caption"]["self_attend"] = ["queries.language.caption", IMAGE]
    assert Prototype.from_dict(config).types["queries.language.caption"].cross_attend == ()


def test_output_whose_only_neighbour_is_also_cut_off_is_named() -> None:
    config = minimal()
    config["queries.language.caption"]["cross_attend"] = []
    config["queries.language.class"] = {"self_attend": ["queries.language.class", "queries.language.caption"]}
    config["queries.language.caption"]["self_attend"] = ["queries.language.caption", "queries.language.class"]
    with pytest.raises(ConfigError, match=r"prototype\.queries\.language\.caption: an output type"):
        Prototype.from_dict(config)


@pytest.mark.parametrize("name", ["queries.caption", "queries.language.caption.extra", "queries..caption", 3])
def test_malformed_name_is_named(name: Any) -> None:
    config = minimal()
    config[name] = {"self_attend": [name]}
    with pytest.raises(ConfigError, match=rf"prototype\.{name}: .*<kind>\.<modality>\.<name>"):
        Prototype.from_dict(config)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"output": True}, r"prototype\.tokens\.language\.caption\.output: tokens are not outputs"),
        ({"self_attend": []}, r"prototype\.tokens\.language\.caption\.self_attend: must include"),
        ({"colour": "red"}, r"prototype\.tokens\.language\.caption\.colour: unknown key"),
        ({"cross_masked": True}, r"prototype\.tokens\.language\.caption\.cross_masked"),
        (
            {"cross_attend": [IMAGE]},
            r"prototype\.tokens\.language\.caption\.cross_attend\[0\]: cross-attention",
        ),
        ({"init_from": IMAGE}, r"prototype\.tokens\.language\.caption\.init_from"),
        ({"output": "yes"}, r"prototype\.tokens\.language\.caption\.output: expected true or false"),
    ],
)
def test_bad_rule_is_named(edit: dict[str, Any], key: str) -> None:
    config = minimal()
    config["tokens.language.caption"].update(edit)
    with pytest.raises(ConfigError, match=key):
        Prototype.from_dict(config)


def test_init_from_must_be_an_original_of_the_same_kind() -> None:
    config = minimal()
    config["queries.language.class"] = {
        "self_attend": ["queries.language.class"],
        "cross_attend": ["features"],
        "init_from": "queries.language.caption",
    }
    with pytest.raises(
        ConfigError, match=r"prototype\.queries\.language\.class\.init_from: .*itself initialised"
    ):
        Prototype.from_dict(config)
    config["queries.language.class"]["init_from"] = "tokens.language.caption"
    with pytest.raises(
        ConfigError, match=r"prototype\.queries\.language\.class\.init_from: .*kind 'queries'"
    ):
        Prototype.from_dict(config)


def test_declared_features_type_is_rejected() -> None:
    config = minimal()
    config["features.vision.image"] = {"self_attend": ["features.vision.image"]}
    with pytest.raises(ConfigError, match=r"prototype\.features\.vision\.image: image features"):
        Prototype.from_dict(config)


def test_from_yaml_names_file_and_key(tmp_path: Path) -> None:
    config = minimal()
    config["queries.language.caption"]["cross_attend"] = ["tokens.language.missing"]
    path = tmp_path / "proto.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(
        ConfigError, match=r"model\.prototype\.queries\.language\.caption\.cross_attend\[0\].*proto"
    ):
        Prototype.from_yaml(path, key="model.prototype")
    with pytest.raises(ConfigError, match="cannot read"):
        Prototype.from_yaml(tmp_path / "missing.yaml")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"prototype\.queries\.vision\.image: an output type"):
        Prototype({IMAGE: TypeRule(self_attend=(IMAGE,), output=True)})


# ---------------------------------------------------------------- conditional attention (FIND)


def test_default_prototype_has_finds_conditional_swap_of_the_segment_proposals() -> None:
    (swap,) = default_prototype().types[SEGMENT].conditional
    assert (swap.replace, swap.by, swap.p) == ("tokens.vision.spatial", "queries.vision.spatial", 0.3)


SPATIAL_TYPES = (SEGMENT, "tokens.vision.spatial", "queries.vision.spatial", "memories.vision.spatial")


def test_a_drawn_swap_replaces_the_entry_and_compiles() -> None:
    prototype = default_prototype()
    always = Prototype.from_dict(
        {
            name: {
                "self_attend": list(rule.self_attend),
                "cross_attend": list(rule.cross_attend),
                "cross_masked": rule.cross_masked,
                "output": rule.output,
                "init_from": rule.init_from,
                "conditional": [{"replace": s.replace, "by": s.by, "p": 1.0} for s in rule.conditional],
            }
            for name, rule in prototype.types.items()
        }
    )
    swapped = always.conditioned(set(SPATIAL_TYPES), torch.Generator().manual_seed(0))
    assert swapped.types[SEGMENT].self_attend == (
        SEGMENT,
        "queries.vision.spatial",
        "memories.vision.spatial",
    )
    compiled = swapped.compile({SEGMENT: 3, "queries.vision.spatial": 1, "tokens.vision.spatial": 4}, 1)
    rows, spatial_q, spatial_t = (
        compiled.slices[n] for n in (SEGMENT, "queries.vision.spatial", "tokens.vision.spatial")
    )
    assert compiled.self_mask[0, rows, spatial_q].all() and not compiled.self_mask[0, rows, spatial_t].any()
    # the unswapped prototype: the other way round
    plain = always.compile({SEGMENT: 3, "queries.vision.spatial": 1, "tokens.vision.spatial": 4}, 1)
    assert plain.self_mask[0, rows, spatial_t].all() and not plain.self_mask[0, rows, spatial_q].any()


def test_no_draw_when_the_swapped_types_are_absent() -> None:
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    prototype = default_prototype()
    assert prototype.conditioned({OBJECT, IMAGE, "queries.language.class"}, generator) is prototype
    assert torch.equal(generator.get_state(), state)  # other tasks' random streams are untouched
    draws = [prototype.conditioned(set(SPATIAL_TYPES), generator) is not prototype for _ in range(400)]
    assert 0.2 < sum(draws) / len(draws) < 0.4  # p = 0.3


@pytest.mark.parametrize(
    ("conditional", "key"),
    [
        (
            [{"replace": "tokens.vision.spatial", "by": "queries.vision.spatial", "p": 1.5}],
            "conditional[0].p",
        ),
        (
            [{"replace": "queries.vision.image", "by": "queries.vision.spatial", "p": 0.3}],
            "conditional[0].replace",
        ),
        ([{"replace": "tokens.vision.spatial", "by": "queries.nowhere.x", "p": 0.3}], "conditional[0].by"),
        ([{"replace": "tokens.vision.spatial", "p": 0.3}], "conditional[0]"),
        ("tokens.vision.spatial", "conditional"),
    ],
)
def test_bad_conditional_is_named(conditional: Any, key: str) -> None:
    text = (ROOT / "configs" / "prototypes" / "find_default.yaml").read_text()
    mapping = yaml.safe_load(text)
    mapping[SEGMENT]["conditional"] = conditional
    with pytest.raises(
        ConfigError, match=f"prototype.{SEGMENT}.{key}".replace(".", r"\.").replace("[", r"\[")
    ):
        Prototype.from_dict(mapping)
