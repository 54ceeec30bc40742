"""A procedural world of coloured shapes, with exact ground truth and a controllable co-occurrence prior.

Images: white canvases with shapes of 8 classes placed on a grid (one object per cell). Some classes come
in pairs (A, B): whenever one of a pair is drawn, its partner is added with probability `co_prob`. A model
trained on such data can learn the shortcut "A seen -> say B is there", which is the object hallucination
that POPE's adversarial split measures (Li et al. 2023, arXiv 2305.10355: negatives are the objects that
co-occur most with the ones present). Difficulty knobs (object size, pixel noise, occlusion of partners)
weaken the visual evidence so the prior wins more often.

Videos: objects that enter one after another, each visible for its own stretch of frames while it moves, with
per-frame tracks and appear/disappear events. The temporal prior is the video analogue of co-occurrence: when
both objects of a pair are in a training video, the first of the pair (`PAIRS[i][0]`) enters first with
probability `order_prob` (0.95). A model can then answer "Does the circle appear before the square?" from
the prior instead of the frames; held-out videos that break the order (`video_eval_world`) measure that
temporal hallucination, as VideoHallucer's temporal category does.

Outputs of `build_world(cfg, out_dir)`:
    images/{train,test}_NNNNN.png, annotations.json (COCO instances, test split: what the POPE question
    builder reads), annotations_train.json, scenes.json (object lists + render seeds, for counterfactual
    re-renders), videos/NNNNN.mp4, video_events.json, sft.jsonl, sft_video.jsonl,
    videohallucer/{object_relation,temporal}.json, world.json (config, vocabulary `words`, file list).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmpo.builders.judging import YES_NO_PROMPT
from mmpo.records import SFTRecord, make_id, write_jsonl

CLASSES = ["circle", "square", "triangle", "cross", "bar", "ring", "dot", "frame"]
PAIRS = [["circle", "square"], ["triangle", "cross"], ["bar", "ring"], ["dot", "frame"]]
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (50, 80, 220),
           "yellow": (225, 195, 20), "purple": (140, 60, 180), "orange": (240, 130, 20),
           "brown": (130, 80, 30), "cyan": (0, 170, 200)}
# colour_mode "class": each class has its own colour, so a tiny tower detects a class from colour alone and
# a small SFT budget suffices (benchmarks/LOG.md: with random colours a 300-step CLIP's features gave only
# ~0.74-0.80 linear-probe presence accuracy, near the 0.70 base rate, and SFT stayed at chance).
CLASS_COLOURS = {"circle": "red", "square": "blue", "triangle": "green", "cross": "orange", "bar": "purple",
                 "ring": "yellow", "dot": "brown", "frame": "cyan"}
OCCLUDER_RGB = (128, 128, 128)

# Question templates. The image one is POPE's default template (AoiDragon/POPE main.py --template); the
# video ones follow VideoHallucer's object_relation / temporal questions (docs/BENCHMARKS.md §2.1).
IMAGE_Q = "Is there a {} in the image?"
VIDEO_Q = "Is there a {} in the video?"
ORDER_Q = "Does the {} appear before the {}?"
CAPTION_Q = "Describe the image."
# The self-QA builder's yes/no judge prompt: video SFT can teach it so the model can judge itself.
JUDGE_Q = YES_NO_PROMPT
# Video captions name the objects in order of entrance, so every caption puts a loss on the order itself.
ORDER_CAPTION = ("First a {} appears", ", then a {}", ".")
PUNCTUATION = ["?", ".", ",", "'"]


@dataclass
class WorldConfig:
    seed: int = 0  # master seed: every image, video and question derives from it
    image_size: int = 64  # square image side in pixels
    n_images: int = 3000  # training images
    n_test_images: int = 400  # held-out images (annotations.json, the POPE source)
    n_videos: int = 40  # videos
    classes: list[str] = field(default_factory=lambda: list(CLASSES))  # shape classes (subset of CLASSES)
    pairs: list[list[str]] = field(default_factory=lambda: [list(p) for p in PAIRS])  # co-occurring pairs
    # Defaults = the recipe measured in benchmarks/LOG.md (2026-11-23, run H1): random F1 0.786, adversarial
    # F1 0.714, adversarial yes-ratio 0.574 after 700 SFT steps.
    co_prob: float = 0.95  # P(partner added | one of a pair drawn), training images and videos
    test_co_prob: float = 0.2  # the same for held-out images (lower: more partner-absent cases to ask about)
    min_objects: int = 1  # objects drawn before partners are added
    max_objects: int = 2
    size_range: list[int] = field(default_factory=lambda: [14, 20])  # object side in pixels [min, max]
    noise: float = 0.0  # std of Gaussian pixel noise (0-255 scale)
    occlusion: float = 0.0  # P(a partner object is half covered by a grey occluder)
    partner_scale: float = 0.4  # partners (objects added by co-occurrence) are drawn this much smaller
    order_prob: float = 0.95  # P(the first of a pair enters first | both in a training video): the temporal prior
    order_qa_per_video: int = 4  # "Does the X appear before the Y?" records per training video (both orders)
    # Video defaults = the recipe measured in benchmarks/LOG.md (2026-11-28, run T2): after 1000 SFT steps temporal
    # pair accuracy 0.95 on prior-consistent, 0.33 on counter-prior and 0.86 on no-prior held-out pairs.
    max_video_objects: int = 3  # objects per video at most (each gets >= 2 of the `frames` frames)
    video_linger: int = 1  # frames an object stays after the next one has entered (0: back-to-back windows)
    frames: int = 8  # frames per video (>= 8)
    video_width: int = 64  # >= 64: decord 0.6.0 mangles 16/48-px-wide frames (docs/ENVIRONMENT.md §2a)
    video_height: int = 64
    fps: int = 4
    qa_per_image: int = 4  # yes/no questions per training image (half yes, half no when possible)
    qa_partner_frac: float = 0.0  # fraction of QA negatives that are an absent partner (when one exists)
    caption_frac: float = 0.2  # P(a training image also gets a caption record)
    colour_mode: str = "class"  # "class": CLASS_COLOURS (easy to see); "random": any colour per object


# -- scenes ------------------------------------------------------------------------------------------

def partner_of(cls: str, cfg: WorldConfig) -> str | None:
    """The co-occurring partner of `cls` under `cfg.pairs` (pairs are symmetric), or None."""
    for a, b in cfg.pairs:
        if cls == a:
            return b
        if cls == b:
            return a
    return None


def _grid(cfg: WorldConfig, width: int, height: int) -> tuple[int, int, int]:
    """Cells per row/column and the cell side: one object per cell keeps objects apart."""
    cell = cfg.size_range[1] + 4
    return max(1, width // cell), max(1, height // cell), cell


def _make_object(cls: str, cell_xy: tuple[int, int], cell: int, cfg: WorldConfig, rng) -> dict:
    size = int(rng.integers(cfg.size_range[0], cfg.size_range[1] + 1))
    cx, cy = cell_xy
    x = cx * cell + int(rng.integers(0, cell - size + 1))
    y = cy * cell + int(rng.integers(0, cell - size + 1))
    return {"cls": cls, "colour": _colour(cls, cfg, rng), "size": size, "x": x, "y": y, "occluder": None}


def _colour(cls: str, cfg: WorldConfig, rng: np.random.Generator) -> str:
    pick = str(rng.choice(list(COLOURS)))  # always drawn, so both modes consume the rng alike
    return CLASS_COLOURS.get(cls, pick) if cfg.colour_mode == "class" else pick


def sample_scene(cfg: WorldConfig, rng: np.random.Generator, co_prob: float | None = None) -> list[dict]:
    """Draw one image's objects: primaries, then partners with probability `co_prob`.

    Args:
        cfg: world config.
        rng: numpy Generator (consumed).
        co_prob: partner probability (default `cfg.co_prob`).

    Returns:
        List of object dicts {cls, colour, size, x, y, occluder}; classes are distinct.
    """
    co_prob = cfg.co_prob if co_prob is None else co_prob
    nx, ny, cell = _grid(cfg, cfg.image_size, cfg.image_size)
    k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    classes = [str(c) for c in rng.choice(cfg.classes, size=min(k, len(cfg.classes)), replace=False)]
    for cls in list(classes):
        mate = partner_of(cls, cfg)
        if mate is not None and mate not in classes and mate in cfg.classes and rng.random() < co_prob:
            classes.append(mate)
    cells = [(int(i) % nx, int(i) // nx) for i in rng.permutation(nx * ny)]
    primaries = set(classes[:k])
    objects = []
    for cls, cxy in zip(classes, cells):  # more classes than cells: the last ones are dropped
        obj = _make_object(cls, cxy, cell, cfg, rng)
        if cls not in primaries and cfg.partner_scale != 1.0:
            # a small partner (the "fork next to the plate"): weak evidence, so the prior decides more often
            obj["size"] = max(4, int(round(obj["size"] * cfg.partner_scale)))
        if cls not in primaries and rng.random() < cfg.occlusion:
            # cover one half (left/right/top/bottom) of the partner: its evidence gets weaker, not gone
            s, side = obj["size"], int(rng.integers(4))
            h = s // 2
            obj["occluder"] = [[obj["x"], obj["y"], h, s], [obj["x"] + s - h, obj["y"], h, s],
                               [obj["x"], obj["y"], s, h], [obj["x"], obj["y"] + s - h, s, h]][side]
        objects.append(obj)
    return objects


# -- rendering ---------------------------------------------------------------------------------------

def shape_mask(obj: dict, width: int, height: int) -> np.ndarray:
    """Boolean mask (H, W) of one shape drawn at its box (x, y, size)."""
    img = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(img)
    x, y, s = obj["x"], obj["y"], obj["size"]
    x1, y1 = x + s - 1, y + s - 1
    t = max(2, s // 5)  # stroke width of outlined shapes
    cls = obj["cls"]
    if cls == "circle":
        d.ellipse([x, y, x1, y1], fill=255)
    elif cls == "square":
        d.rectangle([x, y, x1, y1], fill=255)
    elif cls == "triangle":
        d.polygon([(x + s / 2, y), (x1, y1), (x, y1)], fill=255)
    elif cls == "cross":
        a = s // 3
        d.rectangle([x + a, y, x1 - a, y1], fill=255)
        d.rectangle([x, y + a, x1, y1 - a], fill=255)
    elif cls == "bar":
        a = s // 3
        d.rectangle([x, y + a, x1, y1 - a], fill=255)
    elif cls == "ring":
        d.ellipse([x, y, x1, y1], outline=255, width=t)
    elif cls == "dot":
        q = s // 4
        d.ellipse([x + q, y + q, x1 - q, y1 - q], fill=255)
    elif cls == "frame":
        d.rectangle([x, y, x1, y1], outline=255, width=t)
    else:
        raise ValueError(f"unknown shape class {cls!r}")
    return np.asarray(img) > 0


def paint(objects: list[dict], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw objects in order on white; returns (rgb uint8 (H,W,3), owner map (H,W) int, -1 = background/occluder)."""
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    owner = np.full((height, width), -1, dtype=np.int64)
    for i, obj in enumerate(objects):
        m = shape_mask(obj, width, height)
        canvas[m] = COLOURS[obj["colour"]]
        owner[m] = i
    for obj in objects:  # occluders go on top of every shape
        if obj.get("occluder"):
            ox, oy, ow, oh = obj["occluder"]
            canvas[oy:oy + oh, ox:ox + ow] = OCCLUDER_RGB
            owner[oy:oy + oh, ox:ox + ow] = -1
    return canvas, owner


def _add_noise(canvas: np.ndarray, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    # Noise is always drawn (even at std 0) so the rng advances identically whatever the knob is, and a
    # re-render of the same scene minus one object gets exactly the same noise (a clean counterfactual).
    z = rng.standard_normal(canvas.shape)
    return np.clip(canvas.astype(np.float64) + cfg.noise * z, 0, 255).astype(np.uint8)


def render_scene(objects: list[dict], cfg: WorldConfig, rng: np.random.Generator,
                 size: tuple[int, int] | None = None) -> Image.Image:
    """Render a scene deterministically: same objects + same rng state -> same pixels.

    Dropping an object and rendering with a fresh rng of the same seed gives the counterfactual image
    (everything else, noise included, identical).

    Args:
        objects: object dicts from `sample_scene`.
        cfg: world config (noise level, default size).
        rng: numpy Generator for the pixel noise.
        size: (width, height); default (image_size, image_size).

    Returns:
        RGB PIL image.
    """
    w, h = size or (cfg.image_size, cfg.image_size)
    canvas, _ = paint(objects, w, h)
    return Image.fromarray(_add_noise(canvas, cfg, rng), "RGB")


def visible_boxes(objects: list[dict], width: int, height: int) -> list[tuple[list[int], int] | None]:
    """Per object: ([x, y, w, h] tight box of its visible pixels, visible area), or None if fully hidden."""
    _, owner = paint(objects, width, height)
    out = []
    for i in range(len(objects)):
        ys, xs = np.nonzero(owner == i)
        if len(xs) == 0:
            out.append(None)
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        out.append(([x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], int(len(xs))))
    return out


def _scene_seed(cfg: WorldConfig, split: str, index: int) -> int:
    # one independent stream per (world seed, split, item): items can be regenerated one by one
    return int(np.random.SeedSequence([cfg.seed, {"train": 0, "test": 1, "video": 2}[split], index])
               .generate_state(1)[0])


# -- image world -------------------------------------------------------------------------------------

def make_scenes(cfg: WorldConfig, split: str) -> list[dict]:
    """All scenes of a split: [{file, seed, objects}], deterministic under `cfg.seed`."""
    n, co = (cfg.n_images, cfg.co_prob) if split == "train" else (cfg.n_test_images, cfg.test_co_prob)
    scenes = []
    for i in range(n):
        seed = _scene_seed(cfg, split, i)
        objects = sample_scene(cfg, np.random.default_rng(seed), co_prob=co)
        scenes.append({"file": f"images/{split}_{i:05d}.png", "seed": seed, "objects": objects})
    return scenes


def render_image(scene: dict, cfg: WorldConfig, drop: str | None = None) -> Image.Image:
    """Render a stored scene; `drop` names a class to remove (the counterfactual for DPO pairs)."""
    objs = [o for o in scene["objects"] if o["cls"] != drop]
    # the noise stream is seeded apart from the layout stream, so it does not depend on the objects
    return render_scene(objs, cfg, np.random.default_rng([scene["seed"], 1]))


def coco_annotations(scenes: list[dict], cfg: WorldConfig) -> dict:
    """COCO instance-format dict (images, annotations with bbox/category_id/area/id, categories)."""
    cat_id = {c: i + 1 for i, c in enumerate(cfg.classes)}
    images, anns = [], []
    for img_id, sc in enumerate(scenes, start=1):
        images.append({"id": img_id, "file_name": sc["file"], "width": cfg.image_size, "height": cfg.image_size})
        for obj, vis in zip(sc["objects"], visible_boxes(sc["objects"], cfg.image_size, cfg.image_size)):
            if vis is None:
                continue
            bbox, area = vis
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[obj["cls"]],
                         "bbox": bbox, "area": area, "iscrowd": 0, "colour": obj["colour"],
                         "occluded": obj["occluder"] is not None})
    cats = [{"id": i, "name": c, "supercategory": "shape"} for c, i in cat_id.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def make_image_world(cfg: WorldConfig, out_dir: str | Path) -> dict:
    """Render train and test images and write annotations (COCO) and scenes.json.

    Args:
        cfg: world config.
        out_dir: output folder (created).

    Returns:
        {"train": scenes, "test": scenes}.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {s: make_scenes(cfg, s) for s in ("train", "test")}
    for scenes in splits.values():
        for sc in scenes:
            render_image(sc, cfg).save(out / sc["file"])
    (out / "annotations.json").write_text(json.dumps(coco_annotations(splits["test"], cfg)))
    (out / "annotations_train.json").write_text(json.dumps(coco_annotations(splits["train"], cfg)))
    (out / "scenes.json").write_text(json.dumps(splits))
    return splits


# -- video world -------------------------------------------------------------------------------------

def canonical_first(cls: str, cfg: WorldConfig) -> bool | None:
    """True if `cls` is the first of its co-occurring pair (it enters first under the temporal prior),
    False if it is the second, None if it has no partner."""
    for a, b in cfg.pairs:
        if cls in (a, b):
            return cls == a
    return None


def entrance_order(classes: list[str], cfg: WorldConfig, rng: np.random.Generator, order_prob: float) -> list[str]:
    """A random order of entrance in which each co-occurring pair keeps its canonical order with prob `order_prob`.

    Args:
        classes: the video's classes.
        cfg: world config (pairs).
        rng: numpy Generator (consumed).
        order_prob: P(first of a pair before the second) for each pair present.

    Returns:
        The classes in order of entrance.
    """
    order = [str(c) for c in rng.permutation(classes)]
    for a, b in cfg.pairs:
        if a in order and b in order:
            ia, ib = order.index(a), order.index(b)
            if (ia < ib) != (rng.random() < order_prob):  # swap the two places: the others keep theirs
                order[ia], order[ib] = order[ib], order[ia]
    return order


def _windows(n: int, frames: int, rng: np.random.Generator, min_len: int = 2) -> list[int]:
    """Entrance frames of n back-to-back windows covering `frames`, each at least `min_len` long (first at 0)."""
    min_len = min(min_len, frames // n)
    spare = frames - n * min_len
    extra = np.bincount(rng.integers(0, n, size=spare), minlength=n) if spare else np.zeros(n, int)
    lengths = [min_len + int(e) for e in extra]
    return [int(v) for v in np.cumsum([0] + lengths[:-1])]


def sample_video(cfg: WorldConfig, rng: np.random.Generator, co_prob: float | None = None,
                 order_prob: float | None = None) -> list[dict]:
    """Objects of one video: distinct classes that enter one after another (the events).

    Each object is visible from its entrance until `video_linger` frames after the next object enters (the
    last one until the end), moving linearly; entrances are at least 2 frames apart. Short, ordered
    windows make "which came first" a matter of where in the clip an object is, which the tiny 2-layer
    language model over 8 frames learns to read (benchmarks/LOG.md, 2026-11-28; in the earlier world, where
    objects stayed until a random late frame, it answered "yes" to both orders).

    Args:
        cfg: world config.
        rng: numpy Generator (consumed).
        co_prob: partner probability (default `cfg.co_prob`).
        order_prob: P(a pair in canonical order) (default `cfg.order_prob`).

    Returns:
        [{cls, colour, size, start: [x, y], end: [x, y], appear, disappear}] where the object is visible
        on frames appear <= t < disappear.
    """
    co_prob = cfg.co_prob if co_prob is None else co_prob
    order_prob = cfg.order_prob if order_prob is None else order_prob
    T, W, H = cfg.frames, cfg.video_width, cfg.video_height
    k = int(rng.integers(max(2, cfg.min_objects), max(2, cfg.max_objects) + 1))
    classes = [str(c) for c in rng.choice(cfg.classes, size=min(k, len(cfg.classes)), replace=False)]
    for cls in list(classes):
        mate = partner_of(cls, cfg)
        if mate is not None and mate not in classes and mate in cfg.classes and rng.random() < co_prob:
            classes.append(mate)
    classes = entrance_order(classes[:max(1, min(T // 2, cfg.max_video_objects))], cfg, rng, order_prob)
    appears = _windows(len(classes), T, rng)
    objs = []
    for i, (cls, a) in enumerate(zip(classes, appears)):
        s = int(rng.integers(cfg.size_range[0], cfg.size_range[1] + 1))
        start = [int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))]
        end = [int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))]
        gone = min(T, appears[i + 1] + cfg.video_linger) if i + 1 < len(appears) else T
        objs.append({"cls": cls, "colour": _colour(cls, cfg, rng), "size": s, "start": start,
                     "end": end, "appear": a, "disappear": gone})
    return objs


def _at_frame(obj: dict, t: int) -> dict:
    span = max(1, obj["disappear"] - 1 - obj["appear"])
    f = (t - obj["appear"]) / span
    x = int(round(obj["start"][0] + f * (obj["end"][0] - obj["start"][0])))
    y = int(round(obj["start"][1] + f * (obj["end"][1] - obj["start"][1])))
    return {"cls": obj["cls"], "colour": obj["colour"], "size": obj["size"], "x": x, "y": y, "occluder": None}


def render_video(objs: list[dict], cfg: WorldConfig, seed: int) -> tuple[np.ndarray, dict]:
    """Frames (T,H,W,3) uint8 and ground truth {objects: [{cls, colour, track}], events, order}."""
    rng = np.random.default_rng([seed, 1])
    W, H = cfg.video_width, cfg.video_height
    frames, tracks = [], {i: [] for i in range(len(objs))}
    for t in range(cfg.frames):
        live = [i for i, o in enumerate(objs) if o["appear"] <= t < o["disappear"]]
        scene = [_at_frame(objs[i], t) for i in live]
        frames.append(np.asarray(render_scene(scene, cfg, rng, size=(W, H))))
        # the track is where the object is (its own mask), even when another object hides part of it
        for i, obj, vis in zip(live, scene, visible_boxes(scene, W, H)):
            ys, xs = np.nonzero(shape_mask(obj, W, H))
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1]
            tracks[i].append({"frame": t, "bbox": box, "visible_area": vis[1] if vis else 0})
    events = []
    for i, o in enumerate(objs):
        events.append({"type": "appear", "object": i, "frame": o["appear"]})
        if o["disappear"] < cfg.frames:
            events.append({"type": "disappear", "object": i, "frame": o["disappear"]})
    events.sort(key=lambda e: (e["frame"], e["object"]))
    order = [objs[i]["cls"] for i in sorted(range(len(objs)), key=lambda i: objs[i]["appear"])]
    gt = {"objects": [{"cls": o["cls"], "colour": o["colour"], "track": tracks[i]} for i, o in enumerate(objs)],
          "events": events, "order": order}
    return np.stack(frames), gt


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 4, crf: int = 10) -> Path:
    """Encode (T,H,W,3) uint8 frames as H.264 yuv420p mp4 with PyAV (same settings as tests/videos.py)."""
    import av  # lazy: only the video world needs it

    _, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # mbtree=0: x264's macroblock-tree rate control made other bytes for the same frames now and then (2-3
        # distinct files in 25 encodes of one clip; two demo runs rendered 14 of 400 training videos differently,
        # up to 8 grey levels apart once decoded, so PaMi-VDPO trained on other pixels; benchmarks/LOG.md
        # 2026-12-06). Without it, 75 encodes of the clips that differed repeated byte for byte.
        stream.options = {"crf": str(crf), "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return Path(path)


def make_video_world(cfg: WorldConfig, out_dir: str | Path) -> list[dict]:
    """Render videos/*.mp4 and write video_events.json (tracks, events, order per video).

    Args:
        cfg: world config (frames >= 8, width >= 64, even sizes).
        out_dir: output folder.

    Returns:
        Ground truth per video: [{video, objects, events, order}].
    """
    if cfg.frames < 8 or cfg.video_width < 64 or cfg.video_width % 2 or cfg.video_height % 2:
        raise ValueError(f"video world: need frames >= 8 and even sizes with width >= 64, got "
                         f"{cfg.frames} frames {cfg.video_width}x{cfg.video_height}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    gts = []
    for i in range(cfg.n_videos):
        seed = _scene_seed(cfg, "video", i)
        frames, gt = render_video(sample_video(cfg, np.random.default_rng(seed)), cfg, seed)
        rel = f"videos/{i:05d}.mp4"
        write_mp4(out / rel, frames, fps=cfg.fps)
        gts.append({"video": rel, **gt})
    (out / "video_events.json").write_text(json.dumps(gts))
    return gts


# -- text: SFT and VideoHallucer pairs ----------------------------------------------------------------

def caption(objects: list[dict], cfg: WorldConfig) -> str:
    """'There is a red circle with a blue square, and a green bar.' Pairs are named together, so captions
    repeat the co-occurrence the way real captions repeat "a fork with a knife"."""
    done, parts = set(), []
    for o in objects:
        if o["cls"] in done:
            continue
        phrase = f"a {o['colour']} {o['cls']}"
        mate = next((m for m in objects if m["cls"] == partner_of(o["cls"], cfg) and m["cls"] not in done), None)
        done.add(o["cls"])
        if mate is not None:
            phrase += f" with a {mate['colour']} {mate['cls']}"
            done.add(mate["cls"])
        parts.append(phrase)
    return "There is " + ", and ".join(parts) + "."


def qa_for(present: list[str], cfg: WorldConfig, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Yes/no questions for one item: (object, answer, negative kind) with kind in {"", "partner", "random"}.

    Negatives are absent partners with probability `qa_partner_frac`, otherwise absent non-partners, so a
    small `qa_partner_frac` leaves the co-occurrence shortcut almost never contradicted in training.
    """
    absent = [c for c in cfg.classes if c not in present]
    partners = [c for c in absent if any(partner_of(p, cfg) == c for p in present)]
    others = [c for c in absent if c not in partners]
    n_pos = min(len(present), max(1, cfg.qa_per_image // 2))
    out = [(str(c), "yes", "") for c in rng.choice(present, size=n_pos, replace=False)]
    for _ in range(cfg.qa_per_image - n_pos):
        pool, kind = (partners, "partner") if partners and rng.random() < cfg.qa_partner_frac else (others, "random")
        if not pool:
            pool, kind = (partners or others), ("partner" if partners else "random")
        if not pool:
            break
        out.append((str(rng.choice(pool)), "no", kind))
    return out


def write_sft(scenes: list[dict], cfg: WorldConfig, path: str | Path) -> int:
    """Write SFT JSONL (mmpo.records.SFTRecord) for image scenes: captions and yes/no QA.

    Args:
        scenes: training scenes (from `make_scenes(cfg, "train")`).
        cfg: world config (qa_per_image, qa_partner_frac, caption_frac).
        path: output .jsonl.

    Returns:
        Number of records written.
    """
    rng = np.random.default_rng([cfg.seed, 3])
    recs = []
    for sc in scenes:
        media = (sc["file"],)
        present = [o["cls"] for o in sc["objects"]]
        for obj, ans, kind in qa_for(present, cfg, rng):
            q = IMAGE_Q.format(obj)
            recs.append(SFTRecord(make_id(list(media), q, ans), media, "image", q, ans,
                                  {"kind": "qa", "object": obj, "negative": kind}))
        if rng.random() < cfg.caption_frac:
            cap = caption(sc["objects"], cfg)
            recs.append(SFTRecord(make_id(list(media), CAPTION_Q, cap), media, "image", CAPTION_Q, cap,
                                  {"kind": "caption"}))
    return write_jsonl(path, recs)


def video_caption(order: list[str], colours: dict[str, str]) -> str:
    """'First a red circle appears, then a blue square.': the objects in order of entrance."""
    head, then, stop = ORDER_CAPTION
    names = [f"{colours[c]} {c}" for c in order]
    return head.format(names[0]) + "".join(then.format(n) for n in names[1:]) + stop


def order_qa(order: list[str], n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Up to n distinct "Does the X appear before the Y?" questions with their yes/no answers.

    Both directions of a pair are candidates, so the answers are balanced and the words alone (which
    object is named first) never give the answer away.
    """
    combos = [(x, y) for x in order for y in order if x != y]
    picks = rng.choice(len(combos), size=min(n, len(combos)), replace=False) if combos else []
    return [(ORDER_Q.format(*combos[i]), "yes" if order.index(combos[i][0]) < order.index(combos[i][1]) else "no")
            for i in sorted(int(v) for v in picks)]


def write_sft_video(gts: list[dict], cfg: WorldConfig, path: str | Path) -> int:
    """Write video SFT JSONL: presence QA and order questions per video (captions: `video_caption`)."""
    rng = np.random.default_rng([cfg.seed, 4])
    recs = []
    for gt in gts:
        media = (gt["video"],)
        qas = [(VIDEO_Q.format(o), a, "qa") for o, a, _ in qa_for(gt["order"], cfg, rng)]
        qas += [(q, a, "order") for q, a in order_qa(gt["order"], cfg.order_qa_per_video, rng)]
        for q, a, kind in qas:
            recs.append(SFTRecord(make_id(list(media), q, a), media, "video", q, a, {"kind": kind}))
    return write_jsonl(path, recs)


def order_prior(x: str, y: str, cfg: WorldConfig) -> str:
    """How "x enters before y" relates to the temporal prior: "prior" (a pair in its canonical order),
    "counter" (a pair in the other order) or "none" (not a co-occurring pair)."""
    if partner_of(x, cfg) != y:
        return "none"
    return "prior" if canonical_first(x, cfg) else "counter"


def _vh(video: str, q: str, a: str) -> dict:
    return {"video": Path(video).name, "question": q, "answer": a}


def write_videohallucer(gts: list[dict], cfg: WorldConfig, out_dir: str | Path) -> dict[str, int]:
    """VideoHallucer-format pair files (docs/BENCHMARKS.md §2.1) from the video ground truth.

    object_relation/object_relation.json: basic = a present object (yes), hallucination = its absent
    co-occurring partner (no; an absent non-partner when the partner is there); type "subject" when the
    present object is the first to appear, else "object".
    temporal/temporal.json: basic "Does the X appear before the Y?" (true order, yes), hallucination with
    X and Y swapped (no); type "temporal_relative". X and Y are the video's co-occurring pair when it has
    one (so the pair tests the temporal prior), else two random objects. `video` is the bare file name, as
    in the reference. temporal/prior.json (beside the reference file, same order) tags each temporal pair
    with `order_prior` of its true order: "prior", "counter" (the hallucination question is the one the
    prior answers "yes") or "none".

    Returns:
        Pair counts per category and per prior tag ("temporal_prior", "temporal_counter", "temporal_none").
    """
    rng = np.random.default_rng([cfg.seed, 5])
    rel, tmp, tags = [], [], []
    for gt in gts:
        order, vid = gt["order"], gt["video"]
        absent = [c for c in cfg.classes if c not in order]
        if absent:
            obj = str(rng.choice(order))
            mate = partner_of(obj, cfg)
            neg = mate if mate in absent else str(rng.choice(absent))
            rel.append({"basic": _vh(vid, VIDEO_Q.format(obj), "yes"),
                        "hallucination": _vh(vid, VIDEO_Q.format(neg), "no"),
                        "type": "subject" if obj == order[0] else "object"})
        if len(order) >= 2:
            pairs = [(x, y) for x in order for y in order if order.index(x) < order.index(y)]
            mates = [p for p in pairs if partner_of(p[0], cfg) == p[1]]
            x, y = mates[int(rng.integers(len(mates)))] if mates else pairs[int(rng.integers(len(pairs)))]
            tmp.append({"basic": _vh(vid, ORDER_Q.format(x, y), "yes"),
                        "hallucination": _vh(vid, ORDER_Q.format(y, x), "no"), "type": "temporal_relative"})
            tags.append(order_prior(x, y, cfg))
    counts = {}
    for name, pairs in (("object_relation", rel), ("temporal", tmp)):
        d = Path(out_dir) / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps(pairs, indent=4))  # reference files: indent 4
        counts[name] = len(pairs)
    (Path(out_dir) / "temporal" / "prior.json").write_text(json.dumps(tags))
    counts.update({f"temporal_{t}": tags.count(t) for t in ("prior", "counter", "none")})
    return counts


def world_words(cfg: WorldConfig) -> list[str]:
    """Every word the world's prompts, answers and captions use, plus punctuation, for a word-level tokenizer."""
    texts = [IMAGE_Q, VIDEO_Q, ORDER_Q, CAPTION_Q, *ORDER_CAPTION, "There is a with and", "yes no Yes No",
             "Answer the question using a single word or phrase 'yes' or 'no'"]
    words = {w for t in texts for w in t.replace("{}", " ").replace("?", " ").replace(".", " ")
             .replace(",", " ").replace("'", " ").split()}
    words |= set(cfg.classes) | set(COLOURS)
    return sorted(words) + PUNCTUATION


def build_world(cfg: WorldConfig, out_dir: str | Path, videos: bool = True) -> dict:
    """Write the whole world (images, annotations, videos, SFT, VideoHallucer pairs, world.json).

    Args:
        cfg: world config.
        out_dir: output folder.
        videos: also build the video world (slower: PyAV encoding).

    Returns:
        The world.json dict: {config, words, classes, pairs, files, counts}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_image_world(cfg, out)
    counts = {"train_images": len(splits["train"]), "test_images": len(splits["test"]),
              "sft": write_sft(splits["train"], cfg, out / "sft.jsonl")}
    files = {"annotations": "annotations.json", "annotations_train": "annotations_train.json",
             "scenes": "scenes.json", "sft": "sft.jsonl"}
    if videos and cfg.n_videos > 0:
        gts = make_video_world(cfg, out)
        counts["videos"] = len(gts)
        counts["sft_video"] = write_sft_video(gts, cfg, out / "sft_video.jsonl")
        counts.update({f"videohallucer_{k}": v for k, v in write_videohallucer(gts, cfg, out / "videohallucer").items()})
        files.update(video_events="video_events.json", sft_video="sft_video.jsonl",
                     videohallucer_object_relation="videohallucer/object_relation/object_relation.json",
                     videohallucer_temporal="videohallucer/temporal/temporal.json")
    info = {"config": dataclasses.asdict(cfg), "words": world_words(cfg), "classes": list(cfg.classes),
            "pairs": [list(p) for p in cfg.pairs], "files": files, "counts": counts,
            "image_question": IMAGE_Q, "video_question": VIDEO_Q, "order_question": ORDER_Q}
    (out / "world.json").write_text(json.dumps(info, indent=2))
    return info
