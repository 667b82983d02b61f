"""Interactive segmentation (FIND's spatial task): a stroke or clicks on an object -> its mask.

Prompts (UX-Decoder/FIND ``modeling/interface/find.py`` and ``attention_data_struct_ging.py``): the
stroke's positive (and negative) pixels become ``tokens.vision.spatial`` read from the pixel decoder's
levels (the interface's visual-prompt hook), one ``queries.vision.spatial`` query per prompt reads
them; ``proposals.vision.segment`` proposals (copies of the object proposals) attend to the spatial
tokens and, from the second interaction round on, to ``memories.vision.spatial`` (32 learned
memories) whose read of the image is masked by the previous round's predicted mask. The prototype's
conditional rule (FIND's ``CONDITIONAL_ATTENTION``) lets the segment proposals read the spatial
queries instead of the tokens in 30 % of training forwards.

Matching and losses (FIND ``modeling/modules/criterion.py`` ``loss_spatials``, ``matcher.py``
``spatial_forward``, weights from ``configs/find/focalt_unicl_lang.yaml``): a proposal's logit for a
prompt is the raw dot product of their mask embeddings (``similarity="mask_embeddings"``; or the
scaled cosine of their semantic embeddings, ``"semantic"``); a Hungarian matcher with costs class 5
(minus the softmax over proposals), mask BCE 2 and Dice 2 picks one proposal per prompt; the losses
are CE over proposals 0.4, BCE 1 and Dice 1 on every prediction.

Training rounds (FIND ``find_model.py`` ``forward_seg``): one object per image gets a stroke drawn
from its mask (:mod:`findlit.interactive.strokes`); then 0 to ``max_rounds`` (FIND: ``SPATIAL.MAX_ITER``
= 1) extra rounds run without gradient, each adding one click simulated from the previous
prediction's errors (:func:`~findlit.interactive.clicks.next_click`) and passing its mask to the
memories; the last forward, with gradient, is the one the losses see. FIND keeps one previous mask
per image for the memories, so one object per image is prompted (its code indexes one mask per
image there).

Evaluation: per image up to ``eval_objects`` objects of its original-size targets (largest first;
not crowd regions, not under 10 pixels); each is clicked on ``max_clicks`` times at most (RITM's
protocol: the first click at the object's innermost pixel, the next ones from the errors, stopping
once the IoU has reached 0.9 after at least 5 clicks), and prompted once by its bounding box alone.
The IoUs are scored at the image's size on disk. Metrics: NoC@50/80/85/90, mIoU after 1, 3 and 5
clicks, box mIoU (:class:`~findlit.metrics.InteractiveMetrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torchmetrics import MetricCollection

from findlit.data.collate import Batch, image_origin, image_targets
from findlit.data.predict_config import PredictRequest
from findlit.errors import ConfigError
from findlit.interactive.clicks import Click, click_masks, next_click
from findlit.interactive.strokes import MIN_AREA, StrokeSampling, draw_stroke
from findlit.interface.find import InterfaceOutput, InterfacePrompts
from findlit.interface.heads import class_logits
from findlit.interface.pixel_decoder import PixelDecoderOutput
from findlit.interface.visual_prompts import VisualPrompts
from findlit.losses import HungarianMatcher, LossWeights, PointSampling, grounding_losses
from findlit.losses.points import DEFAULT_NUM_POINTS
from findlit.metrics import InteractiveMetrics
from findlit.metrics.interactive import IOU_AFTER_CLICKS, MAX_CLICKS, NOC_THRESHOLDS
from findlit.nearest_resize import resize_nearest
from findlit.tasks.base import EvaluatedDataset, RequestAnswer, Task, TaskContext, TaskMetrics, TaskRun
from findlit.tasks.grounding import best_proposal_predictions
from findlit.tasks.registry import register_task
from findlit.tasks.seeds import batch_rng, batch_seeds, points_generator

SEGMENT = "proposals.vision.segment"
SPATIAL_TOKENS = "tokens.vision.spatial"
SPATIAL_QUERIES = "queries.vision.spatial"
MEMORIES = "memories.vision.spatial"
SIMILARITIES: tuple[str, ...] = ("mask_embeddings", "semantic")
PROMPT_POSITIVE, PROMPT_NEGATIVE = "prompt_positive", "prompt_negative"
"""A predict batch's per-image prompts (:meth:`InteractiveTask.answer`), bool[P,H,W] each."""
TARGETS = "interactive_targets"
"""``InterfaceOutput.extras`` key: per image the prompted object's mask bool[S,H,W] (S = 0 or 1)."""
CURVES = "interactive_curves"
"""``InterfaceOutput.extras`` key (evaluation): per image (IoU per click float[n,K], box IoU float[n])."""


@dataclass
class RoundState:
    """The prompts of one interaction round for R rows (a row: one prompted object of one image).

    positive, negative: bool[R,H,W] over the frame; previous: float[R,H/4,W/4] the last round's
    chosen mask logits, or None before the second round; prompted: bool[R], rows with a prompt.
    """

    positive: Tensor
    negative: Tensor
    previous: Tensor | None
    prompted: Tensor


@register_task
class InteractiveTask(Task):
    """FIND's spatial task (module docstring).

    Args:
        num_proposals: segment proposals per image (at most the interface's ``num_proposals``).
        weights: loss weights; the ``spatial_*`` ones are used (FIND: CE 0.4, BCE 1, Dice 1).
        num_points: points of the matching costs and of the mask losses.
        strokes: the training strokes (kinds, counts).
        max_rounds: the most extra click rounds without gradient in training (FIND: 1).
        num_memories: learned spatial memories (FIND's ``SPATIAL_MEMORIES``: 32).
        similarity: ``"mask_embeddings"`` (FIND) or ``"semantic"`` (scaled cosine in the joint space).
        max_clicks: clicks per evaluated object at most (NoC's cap: 20).
        click_radius: a click's half-width in pixels at the network's input size (FIND: 1, a 3x3 dot).
        eval_objects: objects evaluated per image, largest first; None = all.
        cost_class, cost_mask, cost_dice: the spatial matcher's weights (FIND's ``COST_SPATIAL``).

    """

    name: ClassVar[str] = "interactive"
    formats: ClassVar[tuple[str, ...]] = ("coco_panoptic", "coco_instances")
    serves: ClassVar[tuple[str, ...]] = ("points", "boxes", "scribbles")
    needs_visual_prompts: ClassVar[bool] = True

    def __init__(
        self,
        num_proposals: int = 100,
        weights: LossWeights = LossWeights(),  # noqa: B008 (a frozen dataclass)
        num_points: int = DEFAULT_NUM_POINTS,
        strokes: StrokeSampling = StrokeSampling(),  # noqa: B008 (a frozen dataclass)
        max_rounds: int = 1,
        num_memories: int = 32,
        similarity: str = "mask_embeddings",
        max_clicks: int = MAX_CLICKS,
        click_radius: int = 1,
        eval_objects: int | None = None,
        cost_class: float = 5.0,
        cost_mask: float = 2.0,
        cost_dice: float = 2.0,
    ):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
        if max_rounds < 0 or num_memories < 0 or click_radius < 0:
            raise ValueError("max_rounds, num_memories and click_radius must not be negative")
        if max_clicks < max(IOU_AFTER_CLICKS):
            raise ValueError(f"max_clicks must be at least {max(IOU_AFTER_CLICKS)}, got {max_clicks}")
        if eval_objects is not None and eval_objects < 1:
            raise ValueError(f"eval_objects must be at least 1 (or null for all), got {eval_objects}")
        self.num_proposals = num_proposals
        self.weights = weights
        self.strokes = strokes
        self.max_rounds = max_rounds
        self.num_memories = num_memories
        self.similarity = similarity
        self.max_clicks = max_clicks
        self.click_radius = click_radius
        self.eval_objects = eval_objects
        self.matcher = HungarianMatcher(cost_class, cost_mask, cost_dice, num_points=num_points)
        self.sampling = PointSampling(num_points=num_points)

    # -- the rounds ---------------------------------------------------------------------------------

    def prompts(self, batch: Batch, context: TaskContext) -> InterfacePrompts:
        """One stroke per image on one of its objects (seeded by the image's sample seed).

        A ``predict`` batch instead gives each image's prompts in its targets (``prompt_positive``
        and ``prompt_negative`` bool[P,H,W], see :meth:`answer`): P prompts of that image.
        """
        if _given(batch):
            return self._given_prompts(batch)
        state, _ = self._stroke_round(batch)
        return self._interface_prompts(state, points_generator(batch, 0))

    def _given_prompts(self, batch: Batch) -> InterfacePrompts:
        positive = torch.cat([target[PROMPT_POSITIVE] for target in batch["targets"]])
        negative = torch.cat([target[PROMPT_NEGATIVE] for target in batch["targets"]])
        image = torch.cat(
            [
                torch.full((int(t[PROMPT_POSITIVE].shape[0]),), b, dtype=torch.long)
                for b, t in enumerate(batch["targets"])
            ]
        ).to(positive.device)
        return InterfacePrompts(
            learned={SEGMENT: self.num_proposals},
            visual={SPATIAL_TOKENS: VisualPrompts(positive, image, negative)},
            per_prompt={SPATIAL_QUERIES: SPATIAL_TOKENS},
            generator=points_generator(batch, 0),
        )

    def run(self, batch: Batch, features: dict[str, Tensor], context: TaskContext) -> InterfaceOutput:
        """The stroke round, extra click rounds in training, and in evaluation the click simulation.

        A ``predict`` batch (its prompts given, :meth:`answer`) runs once, as any task's.
        """
        if _given(batch):
            return super().run(batch, features, context)
        interface = context.interface
        padding = batch["padding_mask"]
        pixel = interface.decode_pixels(features, padding)
        state, targets = self._stroke_round(batch)
        if self.training and self.max_rounds > 0:
            rounds = int(batch_rng(batch).integers(0, self.max_rounds + 1))
            truth = [t[0] if t.shape[0] else None for t in targets]
            # padding is neither object nor background; nor are the dataset's void pixels
            ignore = [
                padding[b] | target["ignore_mask"] if "ignore_mask" in target else padding[b]
                for b, target in enumerate(batch["targets"])
            ]
            with torch.no_grad():
                for round_index in range(rounds):
                    prompts = self._interface_prompts(state, points_generator(batch, round_index))
                    out = interface(features, prompts, padding, pixel=pixel)
                    state = self._click_round(state, out, batch, truth, ignore)
        prompts = self._interface_prompts(state, points_generator(batch, self.max_rounds + 1))
        output = interface(features, prompts, padding, pixel=pixel)
        output.extras[TARGETS] = targets
        if not self.training and not torch.is_grad_enabled():
            output.extras[CURVES] = self._simulate_clicks(batch, features, pixel, context)
        return output

    def _stroke_round(self, batch: Batch) -> tuple[RoundState, list[Tensor]]:
        """Each image's stroke on one object, and that object's mask bool[S,H,W] (S = 1, or 0 if none)."""
        masks = [target["masks"] for target in batch["targets"]]
        frame = tuple(int(s) for s in batch["padding_mask"].shape[-2:])
        device = batch["padding_mask"].device
        positive = torch.zeros(len(masks), *frame, dtype=torch.bool, device=device)
        targets = []
        for b, (image_masks, seed) in enumerate(zip(masks, batch_seeds(batch), strict=True)):
            rng = np.random.default_rng(int(seed))
            array = image_masks.cpu().numpy().astype(bool)
            candidates = np.nonzero(array.reshape(len(array), -1).sum(axis=1) >= MIN_AREA)[0]
            if candidates.size == 0:
                targets.append(image_masks[:0])
                continue
            chosen = int(rng.choice(candidates))
            stroke = draw_stroke(array[chosen], self.strokes.choose(rng), rng, self.strokes)
            positive[b] = torch.from_numpy(stroke).to(device)
            targets.append(image_masks[chosen : chosen + 1])
        prompted = positive.flatten(1).any(dim=1)
        state = RoundState(positive, torch.zeros_like(positive), None, prompted)
        return state, targets

    def _interface_prompts(self, state: RoundState, generator: torch.Generator) -> InterfacePrompts:
        """The round's interface prompts; ``generator`` draws the strokes' points (and conditional swaps)."""
        rows = torch.nonzero(state.prompted).flatten()
        visual = VisualPrompts(state.positive[rows], rows, state.negative[rows])
        learned: dict[str, int | Tensor] = {SEGMENT: self.num_proposals}
        memory_masks = {}
        if state.previous is not None and self.num_memories:
            learned[MEMORIES] = self.num_memories
            memory_masks[MEMORIES] = state.previous
        return InterfacePrompts(
            learned=learned,
            visual={SPATIAL_TOKENS: visual},
            per_prompt={SPATIAL_QUERIES: SPATIAL_TOKENS},
            memory_masks=memory_masks,
            generator=generator,
        )

    def similarities(self, output: InterfaceOutput) -> list[Tensor]:
        """Per prediction float[B,Q,S_max]: each segment proposal's logit for each prompt."""
        if self.similarity == "semantic":
            return [
                class_logits(
                    layer[SEGMENT]["embeddings"], layer[SPATIAL_QUERIES]["embeddings"], output.logit_scale
                )
                for layer in output.layers
            ]
        # FIND: pred_smaskembs @ pred_pspatials^T, no normalisation or temperature
        return [
            layer[SEGMENT]["mask_embeddings"] @ layer[SPATIAL_QUERIES]["mask_embeddings"].transpose(1, 2)
            for layer in output.layers
        ]

    def _chosen(self, output: InterfaceOutput) -> Tensor:
        """float[B,H/4,W/4]: per row the last prediction's best proposal's mask logits for its prompt."""
        similarity = self.similarities(output)[-1][:, :, 0]  # one prompt per row: [B,Q]
        top = similarity.argmax(dim=1)
        logits = output.last[SEGMENT]["mask_logits"]
        return logits[torch.arange(logits.shape[0], device=logits.device), top]

    def _click_round(
        self,
        state: RoundState,
        output: InterfaceOutput,
        batch: Batch,
        truth: Sequence[Tensor | None],
        ignore: Sequence[Tensor],
    ) -> RoundState:
        """The next round's prompts: one click per prompted row from its errors at the input size."""
        chosen = self._chosen_rows(state, output)
        frame = (int(state.positive.shape[-2]), int(state.positive.shape[-1]))
        predicted = _to_frame(chosen, frame) > 0
        positive, negative = state.positive.clone(), state.negative.clone()
        for row, mask in enumerate(truth):
            if mask is None or not bool(state.prompted[row]):
                continue
            clicked = (positive[row] | negative[row]).cpu().numpy()
            skip = ignore[row].cpu().numpy()
            click = next_click(predicted[row].cpu().numpy(), mask.cpu().numpy(), clicked, skip)
            if click is None:
                continue
            add_positive, add_negative = click_masks([click], frame, self.click_radius)
            positive[row] |= torch.from_numpy(add_positive).to(positive.device)
            negative[row] |= torch.from_numpy(add_negative).to(negative.device)
        return RoundState(positive, negative, chosen.detach(), state.prompted)

    def _chosen_rows(self, state: RoundState, output: InterfaceOutput) -> Tensor:
        """float[R,H/4,W/4] chosen mask logits of every row (very negative for rows without a prompt)."""
        chosen = self._chosen(output)
        return torch.where(state.prompted[:, None, None], chosen, torch.full_like(chosen, -20.0))

    # -- losses and predictions ---------------------------------------------------------------------

    def losses(
        self, output: InterfaceOutput, batch: Batch, context: TaskContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Spatial CE + BCE + Dice on every prediction; the target of a prompt is its object's mask."""
        targets = output.extras.get(TARGETS)
        if targets is None:
            raise ValueError("the interactive losses need the output of InteractiveTask.run")
        if SPATIAL_QUERIES not in output.last:  # no object large enough for a stroke in the batch
            zero = output.last[SEGMENT]["mask_logits"].sum() * 0.0
            return zero, {"ce": zero.detach(), "bce": zero.detach(), "dice": zero.detach()}
        return grounding_losses(
            self.similarities(output),
            [layer[SEGMENT]["mask_logits"] for layer in output.layers],
            output.last[SPATIAL_QUERIES]["valid"],
            [{"masks": masks} for masks in targets],
            self.matcher,
            self.weights,
            self.sampling,
            seeds=batch.get("sample_seeds"),
            term_weights=self.weights.spatial(),
        )

    def predict(self, output: InterfaceOutput, batch: Batch, context: TaskContext) -> list[dict[str, Any]]:
        """Per image ``{"masks": bool[S,h,w]}``: its stroke's object (S = 0 or 1).

        In evaluation also ``"ious": float[n,K]`` (IoU after each click, NaN after stopping) and
        ``"box_ious": float[n]`` of its evaluated objects.
        """
        if _given(batch):
            per_image = best_proposal_predictions(
                self.similarities(output)[-1],
                output.last[SEGMENT]["mask_logits"],
                output.last[SPATIAL_QUERIES]["valid"],
                batch,
            )
            return [{"masks": masks, "scores": scores} for masks, scores in per_image]
        frame = (int(batch["padding_mask"].shape[-2]), int(batch["padding_mask"].shape[-1]))
        predictions = []
        prompted = torch.tensor([t.shape[0] > 0 for t in output.extras.get(TARGETS, [])], dtype=torch.bool)
        chosen = _to_frame(self._chosen(output), frame) if SPATIAL_QUERIES in output.last else None
        curves = output.extras.get(CURVES)
        for b, (h, w) in enumerate(batch["image_sizes"]):
            if chosen is not None and bool(prompted[b]):
                masks = chosen[b : b + 1, :h, :w] > 0
            else:
                masks = torch.zeros(0, h, w, dtype=torch.bool)
            entry: dict[str, Any] = {"masks": masks.cpu()}
            if curves is not None:
                entry["ious"], entry["box_ious"] = curves[b]
            predictions.append(entry)
        return predictions

    # -- prediction requests ------------------------------------------------------------------------

    def answer(self, request: PredictRequest, batch: Batch, run: TaskRun) -> list[RequestAnswer]:
        """Per image one mask for its clicks (all together, one object), one per box, one per scribble.

        Clicks, boxes and scribbles are in the image's pixels on disk; they are mapped to the
        network's input size (a click becomes a ``2 click_radius + 1`` square there, a box its filled
        rectangle, a scribble the input pixels it touches).

        Raises:
            ConfigError: a click or box outside an image, a scribble of another size than an image,
                naming it and the image.

        """
        frame = (int(batch["padding_mask"].shape[-2]), int(batch["padding_mask"].shape[-1]))
        targets = []
        labels: list[str] = []
        for b in range(len(batch["image_ids"])):
            positive, negative, labels = self._request_masks(request, batch, b, frame)
            targets.append({PROMPT_POSITIVE: positive, PROMPT_NEGATIVE: negative})
        task_batch = cast(Batch, {**batch, "task": self.name, "targets": targets})
        answers = []
        for result in run(task_batch, {}):
            scores = [float(s) for s in result["scores"].tolist()]
            answers.append(RequestAnswer(result["masks"], list(labels), scores, "visual"))
        return answers

    def _request_masks(
        self, request: PredictRequest, batch: Batch, b: int, frame: tuple[int, int]
    ) -> tuple[Tensor, Tensor, list[str]]:
        """Image b's prompts bool[P,H,W] (positive, negative) over the frame, and their labels."""
        height, width = (int(v) for v in batch["orig_sizes"][b])
        h, w = (int(v) for v in batch["image_sizes"][b])
        top, left = image_origin(batch["padding_mask"][b])
        name = str(batch["targets"][b].get("file", f"image {b}"))

        def to_input(x: float, y: float, what: str) -> tuple[int, int]:
            if not (0 <= x < width and 0 <= y < height):
                raise ConfigError(f"{what} at ({x:g}, {y:g}) lies outside {name} ({width}x{height})")
            return top + min(int(y * h / height), h - 1), left + min(int(x * w / width), w - 1)

        positives, negatives, labels = [], [], []
        if request.points:
            clicks = []
            for index, point in enumerate(request.points):
                row, col = to_input(point[0], point[1], f"points[{index}]")
                clicks.append(Click(row, col, len(point) < 3 or point[2] == 1))
            pos, neg = click_masks(clicks, frame, self.click_radius)
            positives.append(pos)
            negatives.append(neg)
            count = sum(c.positive for c in clicks)
            labels.append(f"clicks ({count}+, {len(clicks) - count}-)")
        for index, box in enumerate(request.boxes):
            x0, y0, x1, y1 = (float(v) for v in box)
            top_row, left_col = to_input(x0, y0, f"boxes[{index}]")
            bottom_row, right_col = to_input(min(x1, width - 1e-6), min(y1, height - 1e-6), f"boxes[{index}]")
            mask = np.zeros(frame, dtype=bool)
            mask[top_row : bottom_row + 1, left_col : right_col + 1] = True
            positives.append(mask)
            negatives.append(np.zeros(frame, dtype=bool))
            labels.append(f"box {index}")
        for index, scribble in enumerate(request.scribbles):
            if tuple(scribble.shape) != (height, width):
                shape = "x".join(str(n) for n in scribble.shape)
                raise ConfigError(
                    f"scribbles[{index}] is {shape} (height x width), {name} is {height}x{width}: "
                    "a scribble is drawn at the size of its image"
                )
            mask = np.zeros(frame, dtype=bool)
            mask[top : top + h, left : left + w] = _touched(scribble, (h, w))
            positives.append(mask)
            negatives.append(np.zeros(frame, dtype=bool))
            labels.append(f"scribble {index}")
        device = batch["padding_mask"].device
        return (
            torch.from_numpy(np.stack(positives)).to(device),
            torch.from_numpy(np.stack(negatives)).to(device),
            labels,
        )

    # -- evaluation ----------------------------------------------------------------------------------

    def build_metrics(self, dataset: EvaluatedDataset) -> TaskMetrics | None:
        """NoC@50/80/85/90, mIoU after 1/3/5 clicks, box mIoU (in a collection: it clones with a prefix)."""
        metric = InteractiveMetrics(self.max_clicks, NOC_THRESHOLDS, IOU_AFTER_CLICKS)
        return MetricCollection({"interactive": metric}, compute_groups=False)

    def update_metrics(
        self, metrics: TaskMetrics, batch: Batch, predictions: list[dict[str, Any]], context: TaskContext
    ) -> None:
        """Each evaluated object's IoU curve and box IoU."""
        interactive = cast(InteractiveMetrics, metrics["interactive"])  # type: ignore[index]
        for prediction in predictions:
            if "ious" in prediction:
                interactive.update(prediction["ious"], box_ious=prediction["box_ious"])

    def _simulate_clicks(
        self, batch: Batch, features: dict[str, Tensor], pixel: PixelDecoderOutput, context: TaskContext
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image (IoU after each click float[n,max_clicks], NaN after stopping; box IoU float[n])."""
        objects = [
            _evaluated_objects(image_targets(batch, b), self.eval_objects)
            for b in range(len(batch["image_ids"]))
        ]
        rows = [(b, index) for b, indices in enumerate(objects) for index in indices]
        curves = torch.full((len(rows), self.max_clicks), float("nan"), dtype=torch.float64)
        box_ious = torch.zeros(len(rows), dtype=torch.float64)
        if rows:
            episode = ClickEpisode(self, batch, features, pixel, context, rows)
            curves, box_ious = episode.run()
        results = []
        start = 0
        for indices in objects:
            stop = start + len(indices)
            results.append((curves[start:stop], box_ious[start:stop]))
            start = stop
        return results


def _touched(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool[h,w]: the cells of an h x w grid over ``mask`` bool[H,W] that any of its pixels falls in.

    A max-pool rather than a nearest resize: a one-pixel scribble on a large photo keeps every stroke
    at the network's smaller input size instead of breaking into dots or vanishing.
    """
    pooled = F.adaptive_max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], size)
    return pooled[0, 0].numpy() > 0


def _given(batch: Batch) -> bool:
    """Whether ``batch`` is a ``predict`` batch whose images carry their prompts (see ``answer``)."""
    return bool(batch["targets"]) and PROMPT_POSITIVE in batch["targets"][0]


def _to_frame(logits: Tensor, frame: tuple[int, int]) -> Tensor:
    """float[R,h,w] stride-4 mask logits -> float[R,H,W] over the padded frame (bilinear, as every task)."""
    return F.interpolate(logits[:, None].float(), size=frame, mode="bilinear", align_corners=False)[:, 0]


def _evaluated_objects(targets: dict[str, Tensor], limit: int | None) -> list[int]:
    """Indices of the objects to click on: not crowd, at least MIN_AREA pixels, largest first."""
    masks = targets.get("masks")
    if masks is None or masks.shape[0] == 0:
        return []
    areas = masks.flatten(1).sum(dim=1)
    crowd = targets.get("iscrowd")
    keep = areas >= MIN_AREA
    if crowd is not None:
        keep &= crowd == 0
    order = [int(i) for i in torch.argsort(-areas, stable=True) if bool(keep[i])]
    return order if limit is None else order[:limit]


class ClickEpisode:
    """RITM's click-by-click evaluation of R objects (rows), all rows of a round in one forward."""

    def __init__(
        self,
        task: InteractiveTask,
        batch: Batch,
        features: dict[str, Tensor],
        pixel: PixelDecoderOutput,
        context: TaskContext,
        rows: list[tuple[int, int]],
    ) -> None:
        self.task = task
        self.context = context
        self.rows = rows
        self.batch = batch
        index = torch.tensor([b for b, _ in rows], dtype=torch.long, device=batch["padding_mask"].device)
        self.features = {level: value[index] for level, value in features.items()}
        self.pixel = pixel.select(index)
        self.padding = batch["padding_mask"][index]
        self.frame = (int(self.padding.shape[-2]), int(self.padding.shape[-1]))
        self.sizes = [tuple(int(s) for s in batch["image_sizes"][b]) for b, _ in rows]
        originals = [image_targets(batch, b) for b, _ in rows]
        self.truth = [
            target["masks"][i].cpu().numpy().astype(bool)
            for target, (_, i) in zip(originals, rows, strict=True)
        ]
        self.ignore = [
            None if "ignore_mask" not in target else target["ignore_mask"].cpu().numpy().astype(bool)
            for target in originals
        ]

    def _to_input(self, row: int, click: Click) -> Click:
        """A click at the original size -> the same place at the network's input size."""
        height, width = self.truth[row].shape
        h, w = self.sizes[row]
        return Click(
            min(int((click.row + 0.5) * h / height), h - 1),
            min(int((click.col + 0.5) * w / width), w - 1),
            click.positive,
        )

    def _predict(self, state: RoundState, round_index: int) -> tuple[Tensor, list[np.ndarray]]:
        """Chosen logits float[R,H/4,W/4] and each row's mask at its original size."""
        output = self.context.interface(
            self.features,
            self.task._interface_prompts(state, points_generator(self.batch, round_index)),
            self.padding,
            pixel=self.pixel,
        )
        chosen = self.task._chosen(output)
        frame_logits = _to_frame(chosen, self.frame)
        masks = []
        for row, (h, w) in enumerate(self.sizes):
            mask = frame_logits[row : row + 1, :h, :w] > 0
            masks.append(resize_nearest(mask, self.truth[row].shape)[0].cpu().numpy())
        return chosen, masks

    def _iou(self, row: int, mask: np.ndarray) -> float:
        truth, ignore = self.truth[row], self.ignore[row]
        counted = np.ones_like(truth) if ignore is None else ~ignore
        union = ((mask | truth) & counted).sum()
        return float(((mask & truth) & counted).sum() / union) if union else 1.0

    def run(self) -> tuple[Tensor, Tensor]:
        """(IoU after each click float64[R,max_clicks], NaN once a row stopped; box IoU float64[R])."""
        count = len(self.rows)
        curves = torch.full((count, self.task.max_clicks), float("nan"), dtype=torch.float64)
        device = self.padding.device
        clicks: list[list[Click]] = [[] for _ in range(count)]
        clicked = [np.zeros_like(t) for t in self.truth]
        predicted = [np.zeros_like(t) for t in self.truth]
        previous: Tensor | None = None
        active = list(range(count))
        for k in range(self.task.max_clicks):
            for row in active:
                click = next_click(predicted[row], self.truth[row], clicked[row], self.ignore[row])
                if click is not None:
                    clicked[row][click.row, click.col] = True
                    clicks[row].append(self._to_input(row, click))
            positive = torch.zeros(count, *self.frame, dtype=torch.bool, device=device)
            negative = torch.zeros_like(positive)
            for row in range(count):
                pos, neg = click_masks(clicks[row], self.frame, self.task.click_radius)
                positive[row], negative[row] = torch.from_numpy(pos), torch.from_numpy(neg)
            state = RoundState(positive, negative, previous, positive.flatten(1).any(dim=1))
            chosen, masks = self._predict(state, k)
            previous = chosen
            for row in active:
                predicted[row] = masks[row]
                curves[row, k] = self._iou(row, masks[row])
            # a row stops once every NoC is known and the IoUs after 1, 3 and 5 clicks are in
            top = max(NOC_THRESHOLDS)
            active = [row for row in active if not (k + 1 >= max(IOU_AFTER_CLICKS) and curves[row, k] >= top)]
            if not active:
                break
        return curves, self._box_ious()

    def _box_ious(self) -> Tensor:
        """Each row prompted by its object's bounding box alone (at the input size)."""
        positive = torch.zeros(len(self.rows), *self.frame, dtype=torch.bool, device=self.padding.device)
        for row, truth in enumerate(self.truth):
            rows, cols = np.nonzero(truth)
            top = self._to_input(row, Click(int(rows.min()), int(cols.min()), True))
            bottom = self._to_input(row, Click(int(rows.max()), int(cols.max()), True))
            positive[row, top.row : bottom.row + 1, top.col : bottom.col + 1] = True
        state = RoundState(positive, torch.zeros_like(positive), None, positive.flatten(1).any(dim=1))
        _, masks = self._predict(state, self.task.max_clicks)
        return torch.tensor([self._iou(row, mask) for row, mask in enumerate(masks)], dtype=torch.float64)
