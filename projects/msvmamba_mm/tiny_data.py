"""Tiny, deterministic datasets in the real on-disk formats of the OpenMMLab stack.

Every image shows drawn shapes (the classes are shape kinds: circle, square, triangle,
...) over a noisy background, so a model can actually learn them. Shapes are polygons
rasterised with pycocotools, the same rasteriser mmdet uses to turn COCO polygons into
masks, and they never overlap: the masks, boxes and label maps written below are exact
for the pixels drawn. The same arguments always give the same files.

Formats (directory layouts mirror the real datasets, so stock configs only need
``data_root``/class overrides):

* :func:`make_coco`: COCO instances, ``annotations/instances_{train,val}2017.json`` +
  ``{train,val}2017/*.jpg`` (polygon segmentations, ``[x, y, w, h]`` boxes).
* :func:`make_ade20k`: ADE20K (ADEChallengeData2016) style, ``images/{training,validation}/
  *.jpg`` + ``annotations/{training,validation}/*.png``. Label values follow ADE20K:
  0 = unlabelled (ignored with ``reduce_zero_label=True``), value ``i + 1`` = class ``i``
  of ``('background', *shape kinds)``.
* :func:`make_imagenet`: ImageNet style class folders ``{train,val}/<class>/*.jpg`` (one
  shape per image, the class is its kind) + ``meta/{train,val}.txt`` ("path label" lines)
  and ``meta/classes.txt``.

Each dataset root also gets ``meta.json`` (classes, splits, image size, seed).
:data:`MAKERS` maps a format name to its folder name (``tiny_<format>``) and maker; the
command line is ``tools/dataset_converters/make_tiny_datasets.py``.
"""
import json
import math
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SHAPE_KINDS = ('circle', 'square', 'triangle', 'diamond', 'hexagon')
DEFAULT_SPLITS = {'train': 8, 'val': 4}
_SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}


# --------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------
def shape_polygon(kind: str, cx: float, cy: float, radius: float,
                  angle: float = 0.0) -> List[float]:
    """Vertices ``[x0, y0, x1, y1, ...]`` of a shape of ``kind`` around (cx, cy)."""
    sides, phase = {
        'circle': (24, 0.0),
        'square': (4, math.pi / 4),
        'triangle': (3, -math.pi / 2),
        'diamond': (4, 0.0),
        'hexagon': (6, 0.0),
    }[kind]
    if kind in ('square', 'diamond'):
        angle = 0.0  # keep the two 4-gons distinguishable (axis-aligned vs rotated)
    pts = []
    for i in range(sides):
        t = phase + angle + 2 * math.pi * i / sides
        pts += [cx + radius * math.cos(t), cy + radius * math.sin(t)]
    return [round(p, 2) for p in pts]


def rasterize_polygon(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Binary (H, W) uint8 mask of a polygon, rasterised exactly like mmdet/COCO do."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.merge(mask_utils.frPyObjects([list(polygon)], height, width))
    with warnings.catch_warnings():
        # pycocotools 2.0.x + numpy 2: "__array__ implementation doesn't accept a copy
        # keyword" (harmless, numpy falls back to a copy)
        warnings.simplefilter('ignore', DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(base + noise, 0, 255)


def _shape_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour that stands out from the mean background colour."""
    mean = background.reshape(-1, 3).mean(0)
    while True:
        color = rng.integers(0, 256, size=3)
        if np.abs(color - mean).sum() > 150:
            return color


# fixed colours per class for ``class_colors=True`` (easy to tell apart and from the
# backgrounds, whose channels stay within 40-200 +- noise)
CLASS_COLORS = ((230, 25, 25), (25, 230, 25), (25, 25, 230), (240, 240, 20), (240, 20, 240))


def draw_scene(rng: np.random.Generator, height: int, width: int,
               kinds: Sequence[str], max_shapes: int = 3, min_shapes: int = 1,
               min_radius: Optional[float] = None, max_radius: Optional[float] = None,
               class_colors: bool = False) -> Tuple[np.ndarray, List[dict]]:
    """An RGB uint8 image with non-overlapping shapes, and one record per shape:
    ``dict(label, polygon, mask, bbox=[x, y, w, h], area)`` (mask exact for the image).
    ``class_colors``: every shape of class i gets ``CLASS_COLORS[i]`` (an easier task)
    instead of a random colour."""
    image = _background(rng, height, width)
    short = min(height, width)
    min_r = min_radius or max(6.0, short / 10)
    max_r = max(min_r + 1, max_radius or short / 4)
    target = int(rng.integers(min_shapes, max_shapes + 1))
    taken = np.zeros((height, width), bool)
    shapes: List[dict] = []
    for _ in range(50 * target):
        if len(shapes) == target:
            break
        label = int(rng.integers(len(kinds)))
        r = float(rng.uniform(min_r, max_r))
        cx = float(rng.uniform(r + 1, width - r - 1))
        cy = float(rng.uniform(r + 1, height - r - 1))
        polygon = shape_polygon(kinds[label], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        mask = rasterize_polygon(polygon, height, width)
        # keep a 2 pixel gap to every shape already drawn
        x0, y0, x1, y1 = (max(0, int(cx - r) - 3), max(0, int(cy - r) - 3),
                          int(cx + r) + 4, int(cy + r) + 4)
        if mask.sum() < 16 or taken[y0:y1, x0:x1].any():
            continue
        taken[y0:y1, x0:x1] = True
        image[mask.astype(bool)] = (CLASS_COLORS[label % len(CLASS_COLORS)] if class_colors
                                    else _shape_color(rng, image))
        ys, xs = np.nonzero(mask)
        shapes.append(dict(
            label=label, polygon=polygon, mask=mask,
            bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                  int(ys.max() - ys.min() + 1)],
            area=int(mask.sum())))
    return image.astype(np.uint8), shapes


def _rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, dataset)), _SPLIT_IDS.get(split, 9)])


def _save_jpg(image: np.ndarray, path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _write_meta(root: str, **meta) -> None:
    with open(osp.join(root, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)


# --------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------
def make_coco(root: str, splits: Optional[Dict[str, int]] = None,
              size: Tuple[int, int] = (128, 128), seed: int = 0,
              classes: Sequence[str] = SHAPE_KINDS[:3], max_shapes: int = 3,
              radius: Optional[Tuple[float, float]] = None,
              class_colors: bool = False) -> dict:
    """COCO instance segmentation: returns ``dict(classes=..., ann_files={split: path})``.
    ``radius``: (min, max) shape radius as fractions of the short image side (default
    0.1, 0.25); ``class_colors``: one fixed colour per class (see :func:`draw_scene`)."""
    splits = splits or DEFAULT_SPLITS
    h, w = size
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(classes)]
    ann_files = {}
    for split, num in splits.items():
        rng = _rng(seed, 'coco', split)
        images, annotations = [], []
        for i in range(num):
            image, shapes = draw_scene(
                rng, h, w, classes, max_shapes=max_shapes, class_colors=class_colors,
                **({} if radius is None else dict(min_radius=radius[0] * min(h, w),
                                                  max_radius=radius[1] * min(h, w))))
            file_name = f'{i:06d}.jpg'
            _save_jpg(image, osp.join(root, f'{split}2017', file_name))
            images.append(dict(id=i + 1, file_name=file_name, height=h, width=w))
            for s in shapes:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=s['label'] + 1,
                    segmentation=[s['polygon']], bbox=s['bbox'], area=s['area'], iscrowd=0))
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        os.makedirs(osp.dirname(ann_file), exist_ok=True)
        with open(ann_file, 'w') as f:
            json.dump(dict(info=dict(description='tiny shapes (COCO format)'), licenses=[],
                           images=images, annotations=annotations, categories=categories), f)
        ann_files[split] = ann_file
    _write_meta(root, format='coco', classes=list(classes), splits=splits, size=list(size),
                seed=seed, **({} if radius is None else dict(radius=list(radius))),
                **(dict(class_colors=True) if class_colors else {}))
    return dict(classes=tuple(classes), ann_files=ann_files)


ADE_SPLIT_DIRS = {'train': 'training', 'val': 'validation'}


def make_ade20k(root: str, splits: Optional[Dict[str, int]] = None,
                size: Tuple[int, int] = (128, 128), seed: int = 0,
                kinds: Sequence[str] = SHAPE_KINDS[:3], max_shapes: int = 4) -> dict:
    """ADE20K-style semantic segmentation: returns ``dict(classes=...)`` where the
    classes are ``('background', *kinds)`` and label value ``i + 1`` marks class ``i``."""
    splits = splits or DEFAULT_SPLITS
    h, w = size
    for split, num in splits.items():
        rng = _rng(seed, 'ade20k', split)
        sub = ADE_SPLIT_DIRS.get(split, split)
        for i in range(num):
            image, shapes = draw_scene(rng, h, w, kinds, max_shapes=max_shapes)
            label_map = np.ones((h, w), np.uint8)  # class 0 'background' -> value 1
            for s in shapes:
                label_map[s['mask'].astype(bool)] = s['label'] + 2
            name = f'ADE_{sub}_{i:08d}'
            _save_jpg(image, osp.join(root, 'images', sub, name + '.jpg'))
            ann_path = osp.join(root, 'annotations', sub, name + '.png')
            os.makedirs(osp.dirname(ann_path), exist_ok=True)
            Image.fromarray(label_map).save(ann_path)
    classes = ('background', *kinds)
    _write_meta(root, format='ade20k', classes=list(classes), splits=splits,
                size=list(size), seed=seed, label_offset=1)
    return dict(classes=classes)


def make_imagenet(root: str, splits: Optional[Dict[str, int]] = None,
                  size: Tuple[int, int] = (64, 64), seed: int = 0,
                  classes: Sequence[str] = SHAPE_KINDS[:3],
                  class_colors: bool = False) -> dict:
    """ImageNet-style classification folders; ``splits`` counts images per class.
    ``class_colors``: the shape of class i is drawn in ``CLASS_COLORS[i]`` (a task a small
    model learns in a few hundred steps; shape alone, in random colours, takes longer)."""
    splits = splits or DEFAULT_SPLITS
    h, w = size
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split, per_class in splits.items():
        rng = _rng(seed, 'imagenet', split)
        lines = []
        for label, name in enumerate(classes):
            for i in range(per_class):
                image, records = draw_scene(rng, h, w, [name], max_shapes=1,
                                            min_radius=min(h, w) / 6)
                if class_colors:  # draw_scene sees one kind here: label 0
                    for record in records:
                        image[record['mask'].astype(bool)] = CLASS_COLORS[
                            label % len(CLASS_COLORS)]
                rel = f'{name}/{name}_{i:05d}.jpg'
                _save_jpg(image, osp.join(root, split, rel))
                lines.append(f'{rel} {label}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    with open(osp.join(root, 'meta', 'classes.txt'), 'w') as f:
        f.writelines(f'{c}\n' for c in classes)
    _write_meta(root, format='imagenet', classes=list(classes), splits=splits,
                size=list(size), seed=seed, **(dict(class_colors=True) if class_colors else {}))
    return dict(classes=tuple(classes))


MAKERS = {
    'coco': ('tiny_coco', make_coco),
    'ade20k': ('tiny_ade20k', make_ade20k),
    'imagenet': ('tiny_imagenet', make_imagenet),
}


def make_datasets(formats: Sequence[str], out_dir: str, splits: Optional[Dict[str, int]] = None,
                  size: Optional[Tuple[int, int]] = None, seed: int = 0,
                  radius: Optional[Tuple[float, float]] = None,
                  class_colors: bool = False) -> Dict[str, Tuple[str, dict]]:
    """Each format of ``formats`` (keys of :data:`MAKERS`) under ``<out_dir>/tiny_<format>``;
    returns ``{format: (root, what its maker returned)}``. ``size`` defaults per format
    (128 x 128; ImageNet 64 x 64); ``radius`` and ``class_colors`` apply to COCO only."""
    made = {}
    for fmt in formats:
        folder, maker = MAKERS[fmt]
        root = osp.join(out_dir, folder)
        kwargs = dict(splits=splits, seed=seed)
        if size:
            kwargs['size'] = tuple(size)
        if fmt == 'coco':
            kwargs.update(radius=tuple(radius) if radius else None, class_colors=class_colors)
        made[fmt] = root, maker(root, **kwargs)
    return made
