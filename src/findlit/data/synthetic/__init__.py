"""Generator of the embedded default dataset: coloured shapes on stuff, written in the real COCO formats.

Every image is a scene of *stuff* regions (sky, grass, water, ...) separated by wavy boundaries and
1-6 *things* (circle, star, ...) drawn on top, each with a colour, a size class and a position
derived from the centroid of its visible pixels. Later things occlude earlier ones; the panoptic map
is the resolved visible map, and a thing that stays mostly hidden is dropped from every file.

The language is generated from the same attributes, so a model must see colour, size and position
to solve the tasks: captions, referring expressions that single out one object with the fewest
attributes, referring expressions for objects that are *absent* (rejection), and entity sentences
whose phrases point at panoptic segments (some with a reference to the same kind of segment in
another image).

Output layout (``generate(out, ...)``)::

    <out>/.findlit-synth.json                    marker with the parameters (allows re-generation)
    <out>/{train,val,test}/<image_id:012d>.jpg   RGB JPEG, quality 95
    <out>/panoptic_{split}/<image_id:012d>.png   segment id = R + 256 G + 256^2 B, 0 = void
    <out>/annotations/panoptic_{split}.json      COCO panoptic
    <out>/annotations/instances_{split}.json     COCO instances, RLE masks of things and stuff
    <out>/annotations/captions_{split}.json      COCO captions, 5 per image
    <out>/annotations/dataset_coco.json          Karpathy split with the same captions
    <out>/annotations/refs(synth).p              RefCOCO pickle (every split; plain types only)
    <out>/annotations/refs_{split}.json          the same refs as JSON
    <out>/annotations/refs_absent_{split}.json   refs to objects that are not in the image (ann_id -1)
    <out>/annotations/entity_{split}.json        FIND-Bench COCO-Entity

Splits: ``train``; ``val``, on which checkpoints and configurations are chosen; ``test``, the
images a result is reported on, on which nothing is chosen (empty unless asked for).

Determinism: each image draws from its own ``numpy.random.Generator`` seeded by (seed, split, index),
and every id that spans images is assigned afterwards in image order, so the bytes written do not
depend on ``workers``.

Modules:
    vocabulary        splits, shapes, colours, stuff, size words, category and image ids
    shapes            inside tests of the thing shapes
    scene             rendering of one scene (Thing, StuffRegion, Scene, render_scene)
    describe          descriptions by attributes, which single a thing out, and their wording
    language          captions, referring expressions and absent refs of one image
    entities          entity sentences with the character spans of their phrases
    image_job         one image: render, write pixels, per-image annotations (run in workers)
    annotation_files  assembly of the annotation files, in image order
    output_folder     the marker file and the protection of folders the generator did not write
    summary           what a generation wrote (SplitSummary, SynthSummary)
    pipeline          generate: the public entry point
"""

from findlit.data.synthetic.describe import Description, describes, unique_descriptions
from findlit.data.synthetic.output_folder import MARKER_NAME
from findlit.data.synthetic.pipeline import generate
from findlit.data.synthetic.scene import Scene, StuffRegion, Thing, render_scene
from findlit.data.synthetic.summary import SplitSummary, SynthSummary
from findlit.data.synthetic.vocabulary import (
    COLOUR_NAMES,
    COLOURS,
    GROUND_NAMES,
    SHAPES,
    SIZE_WORDS,
    SPLITS,
    STUFF_CATEGORY_IDS,
    STUFF_NAMES,
    THING_CATEGORY_IDS,
    categories,
    image_id_for,
)

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "GROUND_NAMES",
    "MARKER_NAME",
    "SHAPES",
    "SIZE_WORDS",
    "SPLITS",
    "STUFF_CATEGORY_IDS",
    "STUFF_NAMES",
    "THING_CATEGORY_IDS",
    "Description",
    "Scene",
    "SplitSummary",
    "StuffRegion",
    "SynthSummary",
    "Thing",
    "categories",
    "describes",
    "generate",
    "image_id_for",
    "render_scene",
    "unique_descriptions",
]
