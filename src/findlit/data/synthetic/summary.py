"""What a generation wrote: counts per split, the output folder and the wall time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SplitSummary:
    """Counts written for one split."""

    images: int
    segments: int
    things: int
    captions: int
    refs: int
    absent_refs: int
    entity_sentences: int


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote: the output folder, per-split counts and the wall time."""

    out: Path
    splits: dict[str, SplitSummary]
    seconds: float

    def lines(self) -> list[str]:
        """Human-readable lines for a CLI."""
        rows = [f"wrote {self.out} in {self.seconds:.1f} s"]
        for split, s in self.splits.items():
            rows.append(
                f"  {split}: {s.images} images, {s.segments} segments ({s.things} things), "
                f"{s.captions} captions, {s.refs} refs, {s.absent_refs} absent refs, "
                f"{s.entity_sentences} entity sentences"
            )
        return rows
