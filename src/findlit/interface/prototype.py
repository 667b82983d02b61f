"""Attention prototypes: a task is a choice of embedding types and who reads whom.

A prototype declares embedding types named ``<kind>.<modality>.<name>`` (for example
``queries.language.caption``) and, for each, the types its rows may attend to in the fused
self-attention, what it reads in cross-attention (``features``, the image features, and/or token
types), whether the previous layer's predicted masks restrict its read of the image features,
whether it is an output, and which type's learnable embeddings it starts as a copy of.

:meth:`Prototype.compile` turns a prototype plus the number of embeddings of each type present
in a batch into the layout of one concatenated sequence and the boolean masks the interface
layers use (True everywhere means "may attend"). FIND's default ships as package data and is
returned by :func:`default_prototype`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import InitVar, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from findlit.errors import ConfigError

KINDS: tuple[str, ...] = ("features", "proposals", "queries", "tokens", "memories")
"""Known kinds, in canonical sequence order (features are read, never laid out)."""

FEATURES = "features"
"""The ``cross_attend`` entry that reads the image features."""

_PART = re.compile(r"^[A-Za-z0-9_]+$")
_RULE_KEYS = ("self_attend", "cross_attend", "cross_masked", "output", "init_from", "conditional")
_DEFAULT_RESOURCE = "prototypes/find_default.yaml"


@dataclass(frozen=True)
class TypeName:
    """A parsed embedding type name ``<kind>.<modality>.<name>``."""

    kind: str
    modality: str
    name: str

    @classmethod
    def parse(cls, text: object, key: str) -> TypeName:
        """Parse ``text``; a malformed name or unknown kind is a :class:`ConfigError` naming ``key``."""
        if not isinstance(text, str):
            raise ConfigError(f"{key}: expected a type name '<kind>.<modality>.<name>', got {text!r}")
        parts = text.split(".")
        if len(parts) != 3 or not all(_PART.match(part) for part in parts):
            raise ConfigError(f"{key}: {text!r} is not a type name '<kind>.<modality>.<name>'")
        if parts[0] not in KINDS:
            raise ConfigError(f"{key}: {text!r} has unknown kind {parts[0]!r}; known kinds: {list(KINDS)}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.kind}.{self.modality}.{self.name}"


def kind_of(type_name: str) -> str:
    """The kind of a (valid) type name: ``kind_of("tokens.language.class") == "tokens"``."""
    return type_name.split(".", 1)[0]


@dataclass(frozen=True)
class ConditionalSwap:
    """In training, with probability ``p``, a type attends to ``by`` instead of ``replace`` (FIND).

    FIND's ``CONDITIONAL_ATTENTION`` (UX-Decoder/FIND ``configs/find/focalt_unicl_lang.yaml``,
    applied in ``modeling/interface/prototype/attention_data_struct_ging.py``, ``reset``): the segment
    proposals read the spatial queries instead of the spatial tokens in 30 % of training forwards.
    """

    replace: str
    by: str
    p: float


@dataclass(frozen=True)
class TypeRule:
    """What one embedding type does in the interface.

    Args:
        self_attend: types this type's rows may attend to in self-attention (always includes itself).
        cross_attend: what it reads in cross-attention: ``"features"`` (the image features) and/or
            token types.
        output: whether the interface returns this type's embeddings (never for tokens).
        init_from: the type whose learnable embeddings this type starts as a copy of, or None.
        cross_masked: whether the previous layer's predicted masks restrict the read of image
            features (Mask2Former-style masked attention); only meaningful with ``"features"``.
        conditional: swaps of ``self_attend`` entries drawn in training (:class:`ConditionalSwap`).

    """

    self_attend: tuple[str, ...]
    cross_attend: tuple[str, ...] = ()
    output: bool = False
    init_from: str | None = None
    cross_masked: bool = False
    conditional: tuple[ConditionalSwap, ...] = ()

    @property
    def reads_features(self) -> bool:
        """Whether this type reads the image features in cross-attention."""
        return FEATURES in self.cross_attend

    @property
    def cross_tokens(self) -> tuple[str, ...]:
        """The token types this type reads in cross-attention."""
        return tuple(entry for entry in self.cross_attend if entry != FEATURES)


@dataclass(frozen=True)
class CompiledPrototype:
    """A prototype laid out for one batch. Shapes: B batch, S sequence, T tokens read in cross-attention.

    Args:
        order: the types present, in sequence order.
        slices: positions of each type in the sequence of length S (a type reserves the
            largest per-sample count; shorter samples are padded).
        counts: int64[B] number of real embeddings of each type per sample.
        valid: bool[B,S], False on padding.
        self_mask: bool[B,S,S], True where the query row may attend the key column. Padded
            columns are False, and so are columns of another prompt (``groups``); rows of padded
            positions attend only themselves, so no row is empty.
        token_order: token types read in cross-attention by some present type, in sequence order.
        token_slices: positions of each of those types in the token memory of length T.
        token_positions: int64[T], the sequence position of each token-memory column
            (``tokens(sequence)`` gathers the memory).
        cross_tokens: bool[B,S,T], True where the row reads the token column. Rows that read no
            tokens, padded rows and rows whose sample has none of their tokens are all False: the
            consumer must keep such rows out of the softmax (the interface leaves every row without
            a True here, and reading no features, out of cross-attention).
        reads_tokens: bool[S], whether the position's type reads any token type present.
        reads_features: bool[S], whether the position's type reads the image features.
        features_masked: bool[S], whether the previous layer's masks restrict that read.
        outputs: the present output types, in sequence order.
        init_from: for every declared type initialised as a copy, its source type (present or not).

    """

    order: tuple[str, ...]
    slices: dict[str, slice]
    counts: dict[str, Tensor]
    valid: Tensor
    self_mask: Tensor
    token_order: tuple[str, ...]
    token_slices: dict[str, slice]
    token_positions: Tensor
    cross_tokens: Tensor
    reads_tokens: Tensor
    reads_features: Tensor
    features_masked: Tensor
    outputs: tuple[str, ...]
    init_from: dict[str, str]

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.valid.shape[0])

    @property
    def length(self) -> int:
        """S, the length of the concatenated sequence."""
        return int(self.valid.shape[1])

    @property
    def num_tokens(self) -> int:
        """T, the length of the token memory read in cross-attention."""
        return int(self.token_positions.shape[0])

    def _check(self, sequence: Tensor) -> None:
        if sequence.dim() != 3 or tuple(sequence.shape[:2]) != (self.batch_size, self.length):
            raise ValueError(
                f"expected a sequence of shape [B={self.batch_size}, S={self.length}, D], "
                f"got {tuple(sequence.shape)}"
            )

    def split(self, sequence: Tensor) -> dict[str, Tensor]:
        """Slice ``sequence: float[B,S,D]`` into ``{type: float[B,n_type,D]}`` for the output types.

        ``n_type`` is the type's largest per-sample count; ``valid[:, slices[type]]`` marks padding.
        """
        self._check(sequence)
        return {name: sequence[:, self.slices[name]] for name in self.outputs}

    def tokens(self, sequence: Tensor) -> Tensor:
        """The token memory ``float[B,T,D]`` that ``cross_tokens`` indexes, gathered from ``sequence``."""
        self._check(sequence)
        return sequence[:, self.token_positions]


@dataclass(frozen=True)
class Prototype:
    """Embedding types and their attention rules; construction validates them.

    Args:
        types: ``{type name: TypeRule}``; declaration order breaks ties in the canonical order.
        key: config key the prototype came from, used to name offending keys in errors.

    Raises:
        ConfigError: a malformed name or unknown kind, a reference to an undeclared type,
            a cross-attention entry that is neither ``features`` nor a token type, a token
            output, a bad ``init_from``, or an output with no attention path to an input
            (image features or tokens). The message names the offending key, e.g.
            ``prototype.queries.language.caption.cross_attend[0]``.

    """

    types: dict[str, TypeRule]
    key: InitVar[str] = "prototype"

    def __post_init__(self, key: str) -> None:
        _validate(self.types, key)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], key: str = "prototype") -> Prototype:
        """Build from ``{type: {self_attend: [...], cross_attend: [...], cross_masked, output, init_from}}``.

        Omitted keys default to ``cross_attend: []``, ``cross_masked: false``, ``output: false``,
        ``init_from: null``; ``self_attend`` is required. ``key`` prefixes keys named in errors.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{key}: expected a mapping of type name -> rule, got {type(mapping).__name__}")
        types = {}
        for name, raw in mapping.items():
            TypeName.parse(name, f"{key}.{name}")
            types[name] = _parse_rule(raw, f"{key}.{name}")
        return cls(types, key)

    @classmethod
    def from_yaml(cls, path: str | Path, key: str = "prototype") -> Prototype:
        """Read a prototype YAML file (a mapping of type name -> rule at top level)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"{key}: cannot read prototype file {path}: {error}") from None
        return _from_text(text, str(path), key)

    @property
    def canonical_order(self) -> tuple[str, ...]:
        """All declared types in sequence order: by kind (see :data:`KINDS`), then declaration."""
        declared = list(self.types)
        return tuple(sorted(declared, key=lambda name: (KINDS.index(kind_of(name)), declared.index(name))))

    @property
    def outputs(self) -> tuple[str, ...]:
        """Declared output types, in canonical order."""
        return tuple(name for name in self.canonical_order if self.types[name].output)

    @property
    def init_from(self) -> dict[str, str]:
        """``{type: source}`` for every type that starts as a copy of another type."""
        return {name: rule.init_from for name, rule in self.types.items() if rule.init_from is not None}

    def conditioned(self, present: Collection[str], generator: torch.Generator | None = None) -> Prototype:
        """This prototype with its conditional swaps drawn, for one training forward.

        A swap is drawn (one uniform number, from ``generator`` or torch's global generator) only
        when its type and both the replaced and the replacing type are ``present`` in the batch, so
        batches of other tasks draw nothing (their random streams do not change).

        Returns:
            ``self`` when no swap was drawn or happened, else a prototype whose swapped types attend to
            ``by`` in place of ``replace``.

        """
        changed: dict[str, TypeRule] = {}
        for name, rule in self.types.items():
            attend = list(rule.self_attend)
            for swap in rule.conditional:
                if name not in present or swap.replace not in present or swap.by not in present:
                    continue
                if float(torch.rand((), generator=generator)) < swap.p and swap.replace in attend:
                    attend[attend.index(swap.replace)] = swap.by
            if tuple(attend) != rule.self_attend:
                changed[name] = replace(rule, self_attend=tuple(dict.fromkeys(attend)), conditional=())
        if not changed:
            return self
        return Prototype({name: changed.get(name, rule) for name, rule in self.types.items()})

    def compile(
        self,
        sizes: Mapping[str, int | Tensor],
        batch_size: int,
        device: torch.device | str | None = None,
        groups: Mapping[str, Tensor] | None = None,
    ) -> CompiledPrototype:
        """Lay out the types present in a batch and build their masks.

        Args:
            sizes: number of embeddings per type: an int (same for every sample) or int64[B]
                per-sample counts (the sequence reserves the largest and pads). Types with no
                embedding in any sample are left out.
            batch_size: B.
            device: where every returned tensor lives (default CPU).
            groups: optional ``{type: int64[B, n_type]}`` prompt ids (n_type: the type's reserved
                length). Where a row and a column both have ids, the row attends the column (in
                self-attention, and to a token column in cross-attention) only if their ids are
                equal: each caption query reads its own caption's tokens, and prompts stay
                independent (APE): neither the queries nor the tokens of one caption see another
                caption of the same image, so a caption's embedding does not depend on which other
                captions share its batch. Types not laid out are ignored.

        Returns:
            the :class:`CompiledPrototype`.

        Raises:
            ValueError: a type the prototype does not declare, a bad count, or no type present.

        """
        device = torch.device("cpu") if device is None else torch.device(device)
        counts: dict[str, Tensor] = {}
        for name, size in sizes.items():
            if name not in self.types:
                raise ValueError(f"sizes names {name!r}, which the prototype does not declare")
            count = _counts(name, size, batch_size, device)
            if batch_size > 0 and int(count.max()) > 0:
                counts[name] = count
        order = tuple(name for name in self.canonical_order if name in counts)
        if not order:
            raise ValueError("no embedding type has any embedding in this batch")

        lengths = [int(counts[name].max()) for name in order]
        starts = [sum(lengths[:i]) for i in range(len(order))]
        slices = {name: slice(s, s + n) for name, s, n in zip(order, starts, lengths, strict=True)}
        length = sum(lengths)

        # per position: which type (index into order) and its rank within the type
        type_index = torch.repeat_interleave(
            torch.arange(len(order), device=device), torch.tensor(lengths, device=device)
        )
        rank = torch.arange(length, device=device) - torch.tensor(starts, device=device)[type_index]
        per_type_counts = torch.stack([counts[name] for name in order], dim=1)  # [B,K]
        valid = rank[None, :] < per_type_counts[:, type_index]  # [B,S]

        allowed = _table(order, order, lambda query, key: key in self.types[query].self_attend, device)
        pairs = allowed[type_index[:, None], type_index[None, :]]  # [S,S]
        eye = torch.eye(length, dtype=torch.bool, device=device)
        self_mask = torch.where(valid[:, :, None], pairs[None] & valid[:, None, :], eye[None])
        same_group = _same_group(groups, slices, valid.shape, device) if groups else None
        if same_group is not None:
            # the diagonal always has equal ids, so no row is left empty
            self_mask = self_mask & same_group

        read_tokens = {token for name in order for token in self.types[name].cross_tokens}
        token_order = tuple(name for name in order if name in read_tokens)
        token_lengths = [slices[name].stop - slices[name].start for name in token_order]
        token_starts = [sum(token_lengths[:i]) for i in range(len(token_order))]
        token_slices = {
            name: slice(start, start + n)
            for name, start, n in zip(token_order, token_starts, token_lengths, strict=True)
        }
        token_positions = torch.cat(
            [torch.arange(length, device=device)[slices[name]] for name in token_order]
            or [torch.zeros(0, dtype=torch.long, device=device)]
        )
        token_type_index = type_index[token_positions]  # [T], index into order
        reads = _table(order, order, lambda query, key: key in self.types[query].cross_tokens, device)
        row_reads = reads[type_index[:, None], token_type_index[None, :]]  # [S,T]
        cross_tokens = row_reads[None] & valid[:, :, None] & valid[:, None, token_positions]
        if same_group is not None:
            cross_tokens = cross_tokens & same_group[:, :, token_positions]

        def per_position(flag: Sequence[bool]) -> Tensor:
            return torch.tensor(list(flag), dtype=torch.bool, device=device)[type_index]

        return CompiledPrototype(
            order=order,
            slices=slices,
            counts=counts,
            valid=valid,
            self_mask=self_mask,
            token_order=token_order,
            token_slices=token_slices,
            token_positions=token_positions,
            cross_tokens=cross_tokens,
            reads_tokens=row_reads.any(dim=1),
            reads_features=per_position([self.types[name].reads_features for name in order]),
            features_masked=per_position(
                [self.types[name].reads_features and self.types[name].cross_masked for name in order]
            ),
            outputs=tuple(name for name in order if self.types[name].output),
            init_from=self.init_from,
        )


def default_prototype() -> Prototype:
    """FIND's default prototype (``findlit/interface/prototypes/find_default.yaml``)."""
    resource = resources.files("findlit.interface").joinpath(_DEFAULT_RESOURCE)
    return _from_text(resource.read_text(), f"findlit.interface/{_DEFAULT_RESOURCE}", "prototype")


def _from_text(text: str, source: str, key: str) -> Prototype:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse prototype file {source}: {error}") from None
    try:
        return Prototype.from_dict(data, key)
    except ConfigError as error:
        raise ConfigError(f"{error} (in {source})") from None


def _parse_rule(raw: object, key: str) -> TypeRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping with keys {list(_RULE_KEYS)}, got {raw!r}")
    for field_name in raw:
        if field_name not in _RULE_KEYS:
            raise ConfigError(f"{key}.{field_name}: unknown key; expected one of {list(_RULE_KEYS)}")
    if "self_attend" not in raw:
        raise ConfigError(f"{key}.self_attend: missing (list the types this type may attend to, itself too)")

    def names(field_name: str) -> tuple[str, ...]:
        value = raw.get(field_name, [])
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key}.{field_name}: expected a list of type names, got {value!r}")
        return tuple(value)

    def flag(field_name: str) -> bool:
        value = raw.get(field_name, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}.{field_name}: expected true or false, got {value!r}")
        return value

    init_from = raw.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(f"{key}.init_from: expected a type name or null, got {init_from!r}")
    return TypeRule(
        self_attend=names("self_attend"),
        cross_attend=names("cross_attend"),
        output=flag("output"),
        init_from=init_from,
        cross_masked=flag("cross_masked"),
        conditional=_parse_conditional(raw.get("conditional", []), f"{key}.conditional"),
    )


def _parse_conditional(raw: object, key: str) -> tuple[ConditionalSwap, ...]:
    """``[{replace: type, by: type, p: probability}, ...]`` -> swaps (types are checked by _validate)."""
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{key}: expected a list of {{replace, by, p}}, got {raw!r}")
    swaps = []
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"replace", "by", "p"}:
            raise ConfigError(f"{where}: expected a mapping of exactly replace, by and p; got {entry!r}")
        p = entry["p"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ConfigError(f"{where}.p: expected a probability in 0..1, got {p!r}")
        if not isinstance(entry["replace"], str) or not isinstance(entry["by"], str):
            raise ConfigError(f"{where}: replace and by must be type names, got {entry!r}")
        swaps.append(ConditionalSwap(entry["replace"], entry["by"], float(p)))
    return tuple(swaps)


def _validate(types: Mapping[str, TypeRule], key: str) -> None:
    for name, rule in types.items():
        where = f"{key}.{name}"
        if TypeName.parse(name, where).kind == FEATURES:
            raise ConfigError(
                f"{where}: image features are not a sequence type; read them with cross_attend: [{FEATURES}]"
            )
        if name not in rule.self_attend:
            raise ConfigError(f"{where}.self_attend: must include the type itself ({name!r})")
        for i, other in enumerate(rule.self_attend):
            _check_reference(other, types, f"{where}.self_attend[{i}]")
        for i, other in enumerate(rule.cross_attend):
            if other == FEATURES:
                continue
            _check_reference(other, types, f"{where}.cross_attend[{i}]")
            if kind_of(other) != "tokens":
                raise ConfigError(
                    f"{where}.cross_attend[{i}]: cross-attention reads {FEATURES!r} or token types, "
                    f"got {other!r}"
                )
        for i, swap in enumerate(rule.conditional):
            _check_reference(swap.by, types, f"{where}.conditional[{i}].by")
            if swap.replace not in rule.self_attend or swap.replace == name:
                raise ConfigError(
                    f"{where}.conditional[{i}].replace: {swap.replace!r} must be another entry of self_attend"
                )
        if rule.cross_masked and not rule.reads_features:
            raise ConfigError(f"{where}.cross_masked: true, but the type does not read {FEATURES!r}")
        if rule.output and kind_of(name) == "tokens":
            raise ConfigError(f"{where}.output: tokens are not outputs")
        if rule.init_from is not None:
            _check_init_from(name, rule.init_from, types, f"{where}.init_from")

    reads_input = _reads_input(types)
    for name, rule in types.items():
        if rule.output and not reads_input[name]:
            raise ConfigError(
                f"{key}.{name}: an output type with no path to an input: neither its self_attend nor its "
                f"cross_attend reach image features or tokens, directly or through other types"
            )


def _check_reference(other: str, types: Mapping[str, TypeRule], where: str) -> None:
    TypeName.parse(other, where)
    if other not in types:
        raise ConfigError(f"{where}: refers to {other!r}, which the prototype does not declare")


def _check_init_from(name: str, source: str, types: Mapping[str, TypeRule], where: str) -> None:
    _check_reference(source, types, where)
    if kind_of(name) == "tokens":
        raise ConfigError(f"{where}: tokens come from the encoders and cannot start as copies")
    if source == name or kind_of(source) != kind_of(name):
        raise ConfigError(f"{where}: must name another type of kind {kind_of(name)!r}, got {source!r}")
    if types[source].init_from is not None:
        raise ConfigError(f"{where}: {source!r} is itself initialised from another type; name the original")


def _reads_input(types: Mapping[str, TypeRule]) -> dict[str, bool]:
    """Whether each type reaches image features or tokens through attention (a fixed point)."""
    reads = {name: kind_of(name) == "tokens" or rule.reads_features for name, rule in types.items()}
    changed = True
    while changed:
        changed = False
        for name, rule in types.items():
            if not reads[name] and any(reads[other] for other in rule.self_attend + rule.cross_tokens):
                reads[name] = changed = True
    return reads


def _counts(name: str, size: int | Tensor, batch_size: int, device: torch.device) -> Tensor:
    if isinstance(size, Tensor):
        if size.dim() != 1 or size.shape[0] != batch_size or size.dtype.is_floating_point:
            raise ValueError(
                f"sizes[{name!r}] must be an int or an integer tensor of shape [{batch_size}], "
                f"got {size.dtype} {tuple(size.shape)}"
            )
        count = size.to(device=device, dtype=torch.long)
    elif isinstance(size, int) and not isinstance(size, bool):
        count = torch.full((batch_size,), size, dtype=torch.long, device=device)
    else:
        raise ValueError(f"sizes[{name!r}] must be an int or an int64[B] tensor, got {size!r}")
    if bool((count < 0).any()):
        raise ValueError(f"sizes[{name!r}] has a negative count")
    return count


def _table(
    rows: Sequence[str], columns: Sequence[str], relation: Callable[[str, str], bool], device: torch.device
) -> Tensor:
    """bool[len(rows), len(columns)] with ``relation(row, column)``."""
    return torch.tensor(
        [[bool(relation(row, column)) for column in columns] for row in rows], dtype=torch.bool, device=device
    ).reshape(len(rows), len(columns))


def _same_group(
    groups: Mapping[str, Tensor],
    slices: Mapping[str, slice],
    shape: torch.Size,
    device: torch.device,
) -> Tensor:
    """bool[B,S,S]: False where a row and a column both have prompt ids and they differ."""
    ids = torch.zeros(shape, dtype=torch.long, device=device)
    has_ids = torch.zeros(shape[1], dtype=torch.bool, device=device)
    for name, group in groups.items():
        if name not in slices:
            continue
        span = slices[name]
        expected = (shape[0], span.stop - span.start)
        if tuple(group.shape) != expected:
            raise ValueError(f"groups[{name!r}] must have shape {list(expected)}, got {list(group.shape)}")
        ids[:, span] = group.to(device=device, dtype=torch.long)
        has_ids[span] = True
    both = has_ids[:, None] & has_ids[None, :]  # [S,S]
    return ~both[None] | (ids[:, :, None] == ids[:, None, :])
