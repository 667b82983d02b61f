"""What a task is: a batch becomes interface prompts; the output becomes losses and predictions.

Tasks know no Lightning; the FINDModule routes each batch to its task by ``batch["task"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from findlit.data.collate import Batch
from findlit.encoders.base import TextEmbeddings
from findlit.interface.find import FINDInterface, InterfaceOutput, InterfacePrompts


@dataclass
class Vocabulary:
    """The open vocabulary of one dataset: ``labels`` in its targets index ``class_names``."""

    class_names: list[str]
    thing_classes: list[bool]
    category_ids: list[int] = field(default_factory=list)


@dataclass
class TaskContext:
    """What a task needs besides the batch.

    Args:
        interface: the FIND interface (tasks read its heads, e.g. ``no_object``).
        encode_text: strings -> frozen text embeddings, usually a :class:`~findlit.encoders.PromptCache`.
        vocabularies: dataset name -> :class:`Vocabulary`.
        encode_sentences: strings -> their sentence vectors float[T,D] only (e.g.
            :meth:`~findlit.encoders.PromptCache.sentences`, which skips padding the tokens); None
            takes ``encode_text(texts).sentence``.

    """

    interface: FINDInterface
    encode_text: Callable[[Sequence[str]], TextEmbeddings]
    vocabularies: Mapping[str, Vocabulary] = field(default_factory=dict)
    encode_sentences: Callable[[Sequence[str]], Tensor] | None = None

    def sentences(self, texts: Sequence[str]) -> Tensor:
        """float[T,D] sentence vectors of ``texts`` (the frozen text encoder's pooled embeddings)."""
        if self.encode_sentences is not None:
            return self.encode_sentences(texts)
        return self.encode_text(texts).sentence


class Task(nn.Module):
    """Base of the tasks.

    Subclasses may own trainable parameters (e.g. a visual prompt encoder); they are trained with
    the interface.
    """

    name: ClassVar[str] = ""

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """The embedding types and prompt tokens this batch instantiates."""
        raise NotImplementedError

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total weighted loss, named unweighted terms for logging) over every layer."""
        raise NotImplementedError

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per-image predictions at each image's ``image_sizes`` (before padding)."""
        raise NotImplementedError
