"""Dataset preflight: read every sample of a config's datasets as a run would and list
what would stop the run hours in or silently spoil it, before any GPU time is spent.

Each split's dataset is built from the config through the registries of its package
(mmpretrain, mmdet or mmseg; wrappers such as ``RepeatDataset`` are looked through), with
an empty pipeline, so nothing is transformed. For every sample of its ``data_list``:

* every image (and segmentation map) file exists and decodes completely (PIL; a
  truncated JPEG is a problem, although OpenCV would decode its first part silently);
* detection: boxes are finite, non-degenerate and inside the image, polygons have at
  least three points and a non-zero area, RLE masks are non-empty and of the image's
  size, category ids are categories of the annotation file, labels are class indices,
  the image's size is the one the annotations give. For COCO-style files the raw
  annotations are checked, because mmdet's ``CocoDataset`` drops boxes outside the
  image, degenerate boxes and unknown category ids without a word;
* segmentation: the map has one channel and the image's size, and every label value is
  a class (with ``reduce_zero_label``: 0 and the classes shifted by one) or the ignore
  index;
* classification: every label is a class index.

Every problem names its file. :func:`check_config` is ``tools/misc/check_dataset.py``;
``tools/train.py --check-data`` runs :func:`check_datasets` on the splits it trains and
validates with before it starts.
"""
import contextlib
import io
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .datasets import check_dataset_paths, leaf_datasets
from .errors import UserError

SPLITS = ('train', 'val', 'test')
BOX_TOLERANCE = 1.0  # pixels a box may reach past the image border (rounding in the files)


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset: the file it is in and what is wrong."""
    file: str
    message: str

    def __str__(self) -> str:
        return f'{self.file}: {self.message}'


# --------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------
def _read_bytes(path: str, backend_args: Optional[dict]) -> Tuple[Optional[bytes], str]:
    from mmengine import fileio
    try:
        return fileio.get(path, backend_args=backend_args), ''
    except FileNotFoundError:
        return None, 'file not found'
    except OSError as e:
        return None, f'cannot be read ({e.strerror or e})'


def decode_image(path: str, backend_args: Optional[dict] = None):
    """``(PIL image, '')`` of the completely decoded file, or ``(None, problem)``."""
    from PIL import Image
    data, problem = _read_bytes(path, backend_args)
    if data is None:
        return None, problem
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes all of it: a truncated file raises here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... by format
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f'cannot be decoded ({reason}; {len(data)} bytes)'
    return image, ''


# --------------------------------------------------------------------------------------
# annotation checks (pure functions of the values, shared by the formats)
# --------------------------------------------------------------------------------------
def _fmt(values: Sequence[float]) -> str:
    return '[' + ', '.join(f'{v:g}' for v in values) + ']'


def box_problem(box: Sequence[float], width: Optional[float], height: Optional[float],
                min_size: float = 0) -> Optional[str]:
    """What is wrong with an ``[x1, y1, x2, y2]`` box in a ``width`` x ``height`` image
    (sizes None: unknown, only the box itself is checked), or None. A box needs a width
    and height over ``min_size``, or of at least ``min_size`` when that is not 0."""
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                for v in box):
        return f'box {list(box)} is not four finite numbers'
    x1, y1, x2, y2 = box
    if min(x2 - x1, y2 - y1) <= 0 or min(x2 - x1, y2 - y1) < min_size:
        return f'box {_fmt(box)} is degenerate (width {x2 - x1:g}, height {y2 - y1:g})'
    if width is not None and height is not None and (
            x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE
            or y2 > height + BOX_TOLERANCE):
        return f'box {_fmt(box)} is not inside the {width:g}x{height:g} image'
    return None


def mask_problem(mask, width: Optional[int], height: Optional[int]) -> Optional[str]:
    """What is wrong with an instance mask: COCO polygons ``[[x, y, ...], ...]`` or an
    RLE ``dict(size=[h, w], counts=...)``; None when it is usable."""
    if isinstance(mask, dict):
        counts, size = mask.get('counts'), mask.get('size')
        if not counts:
            return 'the RLE mask is empty'
        if height is not None and list(size or []) != [height, width]:
            return f'the RLE mask is {size} (h, w), the image {[height, width]}'
        return None
    if not mask:
        return 'the mask has no polygon'
    for i, polygon in enumerate(mask):
        if len(polygon) < 6 or len(polygon) % 2:
            return f'polygon {i} has {len(polygon)} coordinates (at least 3 x, y points)'
        xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            return f'polygon {i} has non-finite coordinates'
        area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        if area == 0:
            return f'polygon {i} has zero area'
    return None


def label_problem(label, num_classes: Optional[int], what: str = 'label') -> Optional[str]:
    """What is wrong with a class index (or a list/array of them), or None."""
    values = np.asarray(label).reshape(-1)
    if values.size == 0:
        return f'no {what}'
    if not np.issubdtype(values.dtype, np.integer):
        return f'{what} {label!r} is not an integer class index'
    bad = values[(values < 0) | (values >= (num_classes or np.iinfo(np.int64).max))]
    if bad.size:
        return f'{what} {bad.tolist()} is not a class index (0..{(num_classes or 0) - 1})'
    return None


def seg_values_problem(values: np.ndarray, allowed: Iterable[int], what: str) -> Optional[str]:
    """What is wrong when the label map values ``values`` (unique) are not all in
    ``allowed``; ``what`` describes the allowed values."""
    bad = np.setdiff1d(values, np.fromiter(allowed, dtype=np.int64))
    if bad.size == 0:
        return None
    shown = ', '.join(str(v) for v in bad[:8]) + (', ...' if bad.size > 8 else '')
    return f'label values {shown} are not {what}'


# --------------------------------------------------------------------------------------
# per-sample checkers (picklable: samples are checked in worker processes too)
# --------------------------------------------------------------------------------------
@dataclass
class SampleChecker:
    """Checks one ``data_list`` entry of a dataset: its image, and its annotations as
    the package's loading transform would read them.

    Args:
        kind (str): 'mmdet', 'mmseg' or 'mmpretrain' (the config's default scope).
        num_classes (int, optional): classes of the dataset (its metainfo).
        backend_args (dict, optional): file backend of the image loading transform.
        check_instances (bool): check the ``instances`` of detection samples (False when
            their raw annotations were checked already).
        with_mask (bool): the pipeline loads instance masks.
        ignore_index (int): segmentation: the label value that is ignored.
    """
    kind: str
    num_classes: Optional[int] = None
    backend_args: Optional[dict] = None
    check_instances: bool = True
    with_mask: bool = False
    ignore_index: int = 255

    def __call__(self, info: dict) -> List[Problem]:
        path = str(info.get('img_path', ''))
        image, problem = decode_image(path, self.backend_args)
        if image is None:
            return [Problem(path, f'image {problem}')]
        problems = []
        if self.kind == 'mmdet':
            problems = self._detection(info, path, image.size)
        elif self.kind == 'mmseg':
            problems = self._segmentation(info, path, image.size)
        elif self.kind == 'mmpretrain' and 'gt_label' in info:
            problem = label_problem(info['gt_label'], self.num_classes)
            problems = [Problem(path, problem)] if problem else []
        return problems

    def _detection(self, info: dict, path: str, size: Tuple[int, int]) -> List[Problem]:
        width, height = info.get('width'), info.get('height')
        if width is not None and height is not None and (width, height) != size:
            return [Problem(path, f'the image is {size[0]}x{size[1]} but the annotations '
                            f'give {width}x{height}: boxes and masks would be misplaced')]
        if not self.check_instances:
            return []
        problems = []
        for i, instance in enumerate(info.get('instances', [])):
            for problem in (box_problem(instance.get('bbox', ()), *size),
                            label_problem(instance.get('bbox_label'), self.num_classes),
                            mask_problem(instance['mask'], *size)
                            if self.with_mask and 'mask' in instance else None):
                if problem:
                    problems.append(Problem(path, f'instance {i}: {problem}'))
        return problems

    def _segmentation(self, info: dict, path: str, size: Tuple[int, int]) -> List[Problem]:
        seg_path = info.get('seg_map_path')
        if not seg_path:
            return []
        seg_path = str(seg_path)
        seg, problem = decode_image(seg_path, self.backend_args)
        if seg is None:
            return [Problem(seg_path, f'segmentation map {problem}')]
        # mmseg reads it 'unchanged' and squeezes it (then casts it to uint8: values over
        # 255 wrap around, so they are checked before)
        labels = np.asarray(seg).squeeze()
        if labels.ndim != 2:
            return [Problem(seg_path, f'a segmentation map has one channel, this one '
                            f'{labels.shape[-1]} (mode {seg.mode})')]
        if seg.size != size:
            return [Problem(seg_path, f'the map is {seg.size[0]}x{seg.size[1]}, its image '
                            f'{os.path.basename(path)} {size[0]}x{size[1]}')]
        reduce = bool(info.get('reduce_zero_label', False))
        label_map = info.get('label_map')
        classes = sorted(label_map) if label_map else range(self.num_classes or 0)
        if reduce:  # raw value 0 is ignored, raw value c + 1 is class c (255 stays ignored)
            allowed = {0, 255, *(c + 1 for c in classes)}
            what = (f'0 (ignored: reduce_zero_label), 1..{len(classes)} (the '
                    f'{len(classes)} classes) or the ignore index 255')
        else:
            allowed = {*classes, self.ignore_index}
            what = (f'0..{len(classes) - 1} (the {len(classes)} classes) or the ignore '
                    f'index {self.ignore_index}')
        problem = seg_values_problem(np.unique(labels), allowed, what)
        return [Problem(seg_path, problem)] if problem else []


def _coco_annotation_problems(raw: dict, categories, name: str) -> List[Problem]:
    """Problems of the raw COCO annotations of one image, ``name`` (what mmdet's
    ``CocoDataset`` would drop silently or keep broken)."""
    image = raw['raw_img_info']
    width, height = image.get('width'), image.get('height')
    problems = []
    for ann in raw['raw_ann_info']:
        where = f'annotation id {ann.get("id")}'
        x, y, w, h = (list(ann.get('bbox') or []) + [math.nan] * 4)[:4]
        # mmdet keeps boxes of at least 1 x 1 px with an area > 0
        found = [box_problem([x, y, x + w, y + h], width, height, min_size=1)]
        if 'area' in ann and not ann['area'] > 0:
            found.append(f'area {ann["area"]} (mmdet drops the annotation)')
        if ann.get('category_id') not in categories:
            found.append(f'category id {ann.get("category_id")} is not a category of the '
                         f'annotation file (ids {sorted(categories)})')
        if 'segmentation' in ann:
            found.append(mask_problem(ann['segmentation'], width, height))
        problems += [Problem(name, f'{where}: {p}') for p in found if p]
    return problems


# --------------------------------------------------------------------------------------
# building the datasets
# --------------------------------------------------------------------------------------
def _transform(pipeline, suffix: str) -> dict:
    """The first transform of ``pipeline`` whose type ends with ``suffix``, or {}."""
    for step in pipeline or []:
        if isinstance(step, dict) and str(step.get('type', '')).endswith(suffix):
            return step
    return {}


@dataclass
class SplitDataset:
    """A leaf dataset of one split, built without its pipeline, and how to check it."""
    name: str  # e.g. 'train_dataloader.dataset (CocoDataset)'
    dataset: object
    checker: SampleChecker
    problems: List[Problem] = field(default_factory=list)  # found while loading


class _RawCocoCheck:
    """Stands in for a dataset's ``parse_data_info`` while it loads: checks the raw
    annotations of each image of a COCO-style file (mmdet's ``CocoDataset`` drops boxes
    outside the image, boxes under 1 px and unknown category ids without a word), then
    parses as before."""

    def __init__(self, dataset):
        self.dataset, self.parse = dataset, dataset.parse_data_info
        self.problems: List[Problem] = []
        self.checked = False  # whether the file was COCO-style

    def __call__(self, raw_data_info):
        info = self.parse(raw_data_info)
        if isinstance(raw_data_info, dict) and 'raw_ann_info' in raw_data_info:
            self.checked = True
            name = info.get('img_path') if isinstance(info, dict) else None
            self.problems += _coco_annotation_problems(
                raw_data_info, self.dataset.coco.cats,
                str(name or raw_data_info['raw_img_info'].get('file_name')))
        return info


def _build_leaf(dataset_cfg: dict, where: str, kind: str) -> SplitDataset:
    """Build and load ``dataset_cfg`` (a leaf dataset) with an empty pipeline. A dataset
    the registry cannot build is a UserError; an annotation file that cannot be loaded
    is a problem of the returned entry (whose ``dataset`` is then None)."""
    from mmengine.registry import DATASETS
    pipeline = dataset_cfg.get('pipeline') or []
    load_image = _transform(pipeline, 'LoadImageFromFile')
    load_ann = _transform(pipeline, 'LoadAnnotations')
    name = f'{where} ({dataset_cfg.get("type")})'
    try:
        dataset = DATASETS.build(dict(dataset_cfg, pipeline=[], lazy_init=True))
    except Exception as e:  # unknown type, wrong arguments: the config is wrong
        raise UserError(f'cannot build {where} of the config: {type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""}') from e
    if kind == 'mmseg' and load_ann.get('reduce_zero_label') not in (
            None, getattr(dataset, 'reduce_zero_label', None)):
        raise UserError(f'{where}: the pipeline\'s LoadAnnotations has reduce_zero_label='
                        f'{load_ann["reduce_zero_label"]}, the dataset '
                        f'{dataset.reduce_zero_label} (mmseg stops on this mismatch); set '
                        'it on the dataset only')
    raw_check = None
    if kind == 'mmdet' and hasattr(dataset, 'parse_data_info'):
        raw_check = dataset.parse_data_info = _RawCocoCheck(dataset)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' loading messages
            dataset.full_init()
    except Exception as e:  # a missing or malformed annotation file, an image folder...
        ann_file = getattr(dataset, 'ann_file', '') or name
        return SplitDataset(name, None, SampleChecker(kind), [Problem(
            str(ann_file), f'the dataset cannot be loaded: {type(e).__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""}')])
    finally:
        if raw_check is not None:
            del dataset.parse_data_info  # the class's method again
    classes = (dataset.metainfo or {}).get('classes')
    checker = SampleChecker(
        kind, num_classes=len(classes) if classes else None,
        backend_args=load_image.get('backend_args') or getattr(dataset, 'backend_args',
                                                                  None),
        check_instances=not (raw_check and raw_check.checked),
        with_mask=bool(load_ann.get('with_mask', False)),
        ignore_index=getattr(dataset, 'ignore_index', 255))
    return SplitDataset(name, dataset, checker, raw_check.problems if raw_check else [])


def build_split(cfg, split: str, kind: str) -> List[SplitDataset]:
    """The leaf datasets of ``<split>_dataloader``, built for checking."""
    loader = f'{split}_dataloader'
    loader_cfg = cfg.get(loader)
    if not loader_cfg or not loader_cfg.get('dataset'):
        raise UserError(f'the config has no {loader} (--splits {split}); it has: '
                        f'{", ".join(s for s in SPLITS if cfg.get(f"{s}_dataloader"))}')
    check_dataset_paths(cfg, [loader])
    leaves = leaf_datasets(loader_cfg['dataset'])
    return [_build_leaf(leaf, f'{loader}.dataset' + (f'[{i}]' if len(leaves) > 1 else ''),
                        kind) for i, leaf in enumerate(leaves)]


# --------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------
def default_workers() -> int:
    """Processes that decode images: the CPU cores of this process, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else \
        (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _check_samples(entry: SplitDataset, indices: Sequence[int], workers: int,
                   progress: bool) -> List[Problem]:
    from mmengine.utils import ProgressBar
    infos = (entry.dataset.get_data_info(i) for i in indices)
    problems: List[Problem] = []
    bar = ProgressBar(len(indices), file=sys.stderr) if progress else None
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(entry.checker, infos, chunksize=16)
        else:
            results = map(entry.checker, infos)
        for found in results:
            problems += found
            if bar is not None:
                bar.update()
    if bar is not None:
        sys.stderr.write('\n')
    return problems


def check_datasets(cfg, kind: str, splits: Sequence[str], workers: int = 0,
                   shard: Tuple[int, int] = (0, 1), out=None) -> List[Problem]:
    """Check the datasets of ``splits`` of ``cfg`` (a config of package ``kind``, its
    modules registered and its scope the default one); prints what it checks, a progress
    bar (stderr; in the first share only) and every problem (``out``, default stdout);
    returns the problems.

    Args:
        workers: processes that decode images (0 or 1: this process).
        shard: ``(index, count)``: check only samples ``index, index + count, ...`` (one
            share per process of a distributed run); ``(0, 1)``: all.
    """
    out = out or sys.stdout
    index, count = shard
    problems: List[Problem] = []
    for split in splits:
        for entry in build_split(cfg, split, kind):
            found = list(entry.problems)
            if entry.dataset is not None:
                indices = range(index, len(entry.dataset), count)
                share = '' if count == 1 else f' (share {index + 1} of {count})'
                print(f'{split}: {entry.name}: checking {len(indices)} samples{share}',
                      file=out, flush=True)
                found += _check_samples(entry, indices, workers, progress=index == 0)
            found.sort(key=lambda p: p.file)  # stable: a file's problems stay in order
            for problem in found:
                print(f'  {problem}', file=out)
            print(f'{split}: {entry.name}: ' + (f'{len(found)} problem(s)' if found else
                                                 'no problems'), file=out, flush=True)
            problems += found
    return problems


def check_config(config: str, splits: Sequence[str], cfg_options: Optional[Dict] = None,
                 workers: int = 0, out=None) -> List[Problem]:
    """``tools/misc/check_dataset.py``: load ``config`` (its package set up) and check the
    datasets of ``splits``; prints a summary and returns the problems."""
    from .tooling import load_scoped_config
    cfg, scope = load_scoped_config(config, cfg_options)
    problems = check_datasets(cfg, scope.name, splits, workers=workers, out=out)
    files = len({p.file for p in problems})
    print(f'{len(problems)} problem(s) in {files} file(s)' if problems else
          f'no problems in the {", ".join(splits)} data', file=out or sys.stdout)
    return problems
