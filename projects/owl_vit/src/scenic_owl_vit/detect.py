"""`scenic-owl-vit detect`: open-vocabulary detection in image files, from text queries or
from an example image (one-shot), with a trained workdir or imported weights.

    scenic-owl-vit detect IMAGES... --workdir DIR [--query "a cat" --query dog]
    scenic-owl-vit detect IMAGES... --weights HF_FOLDER_OR_CHECKPOINT --query "a cat"
    scenic-owl-vit detect IMAGES... --weights ... --query-image CROP.png [--query-box x0,y0,x1,y1]

Weights: `--workdir` (or `--weights` naming a workdir) loads a model trained here; without
queries it detects the data set's classes with the config's prompt templates. `--weights`
also takes a Hugging Face OwlViT / Owlv2ForObjectDetection folder (its vocab.json and
merges.txt are the tokenizer) or an original Scenic OWL-ViT checkpoint (msgpack; give the
CLIP vocabulary with `--tokenizer`).

Each image is resized (longer side to the model's input size, bilinear) into the top-left of
a square canvas padded with grey (0.5, the original's padding; 0 after a trained model's
[-1, 1] scaling), normalised as the weights expect (CLIP's mean and std for imported
weights), and the model runs jitted at that one size in batches of `--batch`: one compile
per size. Text queries go through the text tower once per run; an image query is embedded
once. Per image, `OUT/<name>.json` holds the detections above `--threshold` (pixel xyxy of
the original image, score, query index and text) and `OUT/<name>.png` the image with them
drawn. Exit codes as the core's `detect`: 2 bad input before any work, 3 some files skipped.
"""

from __future__ import annotations

import pathlib

import numpy as np

from scenic.common_lib import detect_command

# Imported weights expect CLIP's image normalisation (`scenic_baselines.clip.CLIP_MEAN` /
# `CLIP_STD`); a model trained here sees the pipelines' x / 127.5 - 1 (and converts it itself
# when its config says `clip_pixels`). The model code (jax, flax) is imported when a verb
# runs, not when the CLI starts.
TRAINED_MEAN, TRAINED_STD = detect_command.PIPELINE_MEAN, detect_command.PIPELINE_STD


def command():
    from scenic.common_lib.runner import Command

    return Command(
        run=run, help="open-vocabulary detection in image files", add_arguments=add_arguments
    )


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", help="image files and / or folders of images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's workdir")
    source.add_argument(
        "--weights", help="a Hugging Face OWL-ViT folder, an original checkpoint or a workdir"
    )
    parser.add_argument("--query", action="append", default=[], help="a text query (repeat)")
    parser.add_argument("--query-image", help="an image of the object to find (one-shot)")
    parser.add_argument(
        "--query-box", help="x0,y0,x1,y1: the object's box in --query-image (pixels)"
    )
    parser.add_argument("--tokenizer", help="CLIP vocabulary (file or folder) for --weights")
    parser.add_argument("--out", default=None, help="output folder (default: beside the weights)")
    parser.add_argument("--threshold", type=float, default=0.1, help="minimum score kept")
    parser.add_argument("--checkpoint", default=None, help="a step of --workdir (default latest)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--top-k", type=int, default=100, help="detections kept per image")


def parse_box(value: str | None, image: np.ndarray):
    """`--query-box` as xyxy in [0, 1] of the query image's canvas position (None: whole)."""
    from scenic.common_lib.runner import UsageError

    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"--query-box {value!r}: expected four numbers x0,y0,x1,y1.") from None
    height, width = image.shape[:2]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UsageError(f"--query-box {value}: not a box inside the {width}x{height} query image.")
    return np.array([x0, y0, x1, y1], np.float32) / max(height, width)


class Loaded:
    """A model to detect with: the OWLViT module, its variables, tokenizer, normalisation
    and, for a trained workdir, its base model (class names, templates)."""

    def __init__(self, module, variables, tokenizer, mean, std, base_model=None):
        self.module, self.variables, self.tokenizer = module, variables, tokenizer
        self.mean, self.std, self.base_model = mean, std, base_model


def is_workdir(path: pathlib.Path) -> bool:
    """A training run's workdir (not a Hugging Face folder, which has no such files)."""
    return (path / "checkpoints").is_dir() or (path / "dataset_meta_data.json").is_file()


def load(args, context) -> Loaded:
    from scenic.common_lib.runner import UsageError
    from scenic.train_lib.pretrained_init import PretrainedInitError
    from scenic_baselines import clip, clip_tokenizer

    workdir = args.workdir
    if args.weights and is_workdir(pathlib.Path(args.weights)):
        workdir = args.weights
    if workdir:
        step = detect_command.checkpoint_step(args.checkpoint, workdir)
        trained = context.load_trained_model(workdir, step=step)
        if not hasattr(trained.model, "tokenize"):
            raise UsageError(f"{workdir} holds a {trained.config.model_name}, not an OWL-ViT.")
        return Loaded(trained.model.flax_model, trained.variables, trained.model.tokenizer,
                      TRAINED_MEAN, TRAINED_STD, trained.model)  # fmt: skip
    path = pathlib.Path(args.weights)
    if not path.exists():
        raise UsageError(f"--weights {path} does not exist.")
    try:
        if (path / "config.json").is_file():
            from scenic_owl_vit import weights

            module, params = weights.load_hf_owl_vit(path)
        else:
            from scenic_owl_vit import original_weights

            module, params = original_weights.load_original_owl_vit(path)
    except PretrainedInitError as error:
        raise UsageError(str(error)) from None
    vocabulary = args.tokenizer or (path if (path / "config.json").is_file() else None)
    tokenizer = None
    if args.query:
        if vocabulary is None:
            raise UsageError("Text queries with an original checkpoint need --tokenizer VOCAB.")
        try:
            tokenizer = clip_tokenizer.ClipTokenizer.from_path(vocabulary)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
    return Loaded(module, {"params": params}, tokenizer, clip.CLIP_MEAN, clip.CLIP_STD)


class OpenVocabularyDetector:
    """The model jitted at its input size: `queries(texts | image)` once, then batches."""

    def __init__(self, loaded: Loaded, batch: int, top_k: int):
        import jax

        from scenic.model_lib import detection_postprocess
        from scenic_owl_vit import detection_model
        from scenic_owl_vit import model as owl_model

        self.loaded, self.batch = loaded, batch
        self.canvas = int(loaded.module.image_size)
        module = loaded.module
        # A trained model with `clip_pixels` converts [-1, 1] pixels itself in its own
        # forward; the plain OWLViT methods used for free queries need it done here.
        converts = getattr(module, "clip_pixels", False)
        plain = detection_model.to_clip_pixels if converts else (lambda x: x)

        def detect(variables, images, queries, size, orig_size):
            if queries is None:  # a trained model's own classes and templates
                outputs = module.apply(variables, {"image": images})
            else:
                outputs = module.apply(
                    variables,
                    plain(images),
                    query_embeddings=queries,
                    method=owl_model.OWLViT.__call__,
                )
            scores, labels, boxes = detection_postprocess.top_k_detections(
                outputs["pred_logits"], outputs["pred_boxes"], top_k, softmax=False
            )
            boxes = detection_postprocess.boxes_to_original_pixels(
                boxes, (self.canvas, self.canvas), size, orig_size
            )
            return scores, labels, boxes

        def embed_text(variables, tokens):
            return module.apply(variables, tokens, method=owl_model.OWLViT.text_embeddings)

        def embed_image(variables, image, box):
            query, _, _ = module.apply(
                variables, plain(image), box, method=owl_model.OWLViT.embed_image_query
            )
            return query[:, 0]

        self._detect = jax.jit(detect)
        self._embed_text = jax.jit(embed_text)
        self._embed_image = jax.jit(embed_image)

    def text_queries(self, texts: list[str]):
        tokens = self.loaded.tokenizer.tokenize(texts, self.loaded.module.context_length)
        return self._embed_text(self.loaded.variables, tokens)

    def image_query(self, image: np.ndarray, box):
        canvas, _, _ = detect_command.letterbox(
            image, self.canvas, self.loaded.mean, self.loaded.std
        )
        box = None if box is None else box[None]
        return self._embed_image(self.loaded.variables, canvas[None], box)

    def __call__(self, images: list[np.ndarray], queries) -> list[list[dict]]:
        if not images:
            return []
        prepared = [
            detect_command.letterbox(im, self.canvas, self.loaded.mean, self.loaded.std)
            for im in images
        ]
        stack = lambda xs: detect_command.padded_batch(xs, self.batch)
        canvases = stack([canvas for canvas, _, _ in prepared])
        size = stack([np.asarray(s, np.int32) for _, _, s in prepared])
        orig = stack([np.asarray(im.shape[:2], np.int32) for im in images])
        outputs = self._detect(self.loaded.variables, canvases, queries, size, orig)
        return detect_command.as_detections(*outputs, count=len(images))


def run(args, context) -> int:
    from scenic.common_lib.runner import UsageError

    paths = detect_command.image_paths(args.images)
    if args.batch < 1 or args.top_k < 1 or not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--batch and --top-k must be >= 1 and --threshold in [0, 1].")
    if args.query and args.query_image:
        raise UsageError("Give text queries (--query) or one --query-image, not both.")
    if args.query_box and not args.query_image:
        raise UsageError("--query-box marks the object in --query-image; give both.")
    query_image = None
    if args.query_image:
        try:
            query_image = detect_command.load_image(pathlib.Path(args.query_image))
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(f"--query-image {args.query_image}: {error}") from None
    box = parse_box(args.query_box, query_image) if query_image is not None else None
    loaded = load(args, context)
    if not args.query and query_image is None and loaded.base_model is None:
        raise UsageError("Imported weights need queries: --query TEXT or --query-image FILE.")
    detector = OpenVocabularyDetector(loaded, args.batch, args.top_k)
    if args.query:
        names, queries = list(args.query), detector.text_queries(list(args.query))
    elif query_image is not None:
        names, queries = [f"like {args.query_image}"], detector.image_query(query_image, box)
    else:
        names, queries = list(loaded.base_model.dataset_meta_data["class_names"]), None
    default_out = pathlib.Path(args.workdir or args.weights) / "detect"
    return detect_command.detect_files(
        paths,
        lambda images: detector(images, queries),
        batch=args.batch,
        out=pathlib.Path(args.out) if args.out else default_out,
        threshold=args.threshold,
        label_name=names.__getitem__,
        prog=context.prog,
    )
