"""The tiny datasets (projects/msvmamba_mm/tiny_data.py, the `tiny` fixture) and their
command line, tools/dataset_converters/make_tiny_datasets.py: real formats, exact
annotations, deterministic output."""
import hashlib
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

SPLITS = dict(train=3, val=2)
TOOL = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                'dataset_converters', 'make_tiny_datasets.py')


def _digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize('maker', ['make_coco', 'make_ade20k', 'make_imagenet'])
def test_same_arguments_same_files(tiny, tmp_path, maker):
    make = getattr(tiny, maker)
    make(str(tmp_path / 'a'), splits=SPLITS, size=(48, 64), seed=3)
    make(str(tmp_path / 'b'), splits=SPLITS, size=(48, 64), seed=3)
    make(str(tmp_path / 'c'), splits=SPLITS, size=(48, 64), seed=4)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_coco_masks_boxes_are_exact(tiny, tmp_path):
    info = tiny.make_coco(str(tmp_path), splits=SPLITS, size=(96, 128))
    coco = json.load(open(info['ann_files']['train']))
    assert [c['name'] for c in coco['categories']] == list(info['classes'])
    assert len(coco['images']) == 3 and coco['annotations']
    per_image = {}
    for ann in coco['annotations']:
        img = coco['images'][ann['image_id'] - 1]
        assert (img['height'], img['width']) == (96, 128)
        mask = tiny.rasterize_polygon(ann['segmentation'][0], 96, 128)
        ys, xs = np.nonzero(mask)
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                               ys.max() - ys.min() + 1]
        assert ann['area'] == mask.sum() and ann['iscrowd'] == 0
        others = per_image.setdefault(ann['image_id'], np.zeros_like(mask))
        assert not (others & mask).any(), 'shapes overlap'
        others |= mask
        # the drawn shape is what the mask says: its colour differs from the background
        image = np.asarray(Image.open(tmp_path / 'train2017' / img['file_name']), float)
        inside = image[mask.astype(bool)].mean(0)
        ring = np.zeros_like(mask)
        ring[max(0, ys.min() - 2):ys.max() + 3, max(0, xs.min() - 2):xs.max() + 3] = 1
        outside = image[(ring & ~others.astype(bool)).astype(bool)].mean(0)
        assert np.abs(inside - outside).sum() > 60


def test_ade20k_layout_and_labels(tiny, tmp_path):
    info = tiny.make_ade20k(str(tmp_path), splits=SPLITS, size=(64, 64))
    assert info['classes'][0] == 'background'
    for split, sub in (('train', 'training'), ('val', 'validation')):
        images = sorted(os.listdir(tmp_path / 'images' / sub))
        anns = sorted(os.listdir(tmp_path / 'annotations' / sub))
        assert len(images) == SPLITS[split]
        assert [a[:-4] for a in anns] == [i[:-4] for i in images]
        for ann in anns:
            labels = np.asarray(Image.open(tmp_path / 'annotations' / sub / ann))
            assert labels.dtype == np.uint8 and labels.shape == (64, 64)
            values = set(np.unique(labels))
            assert 1 in values and values <= set(range(1, len(info['classes']) + 1))


def test_imagenet_folders_and_meta(tiny, tmp_path):
    info = tiny.make_imagenet(str(tmp_path), splits=SPLITS)
    assert sorted(os.listdir(tmp_path / 'train')) == sorted(info['classes'])
    lines = open(tmp_path / 'meta' / 'val.txt').read().split('\n')[:-1]
    assert len(lines) == SPLITS['val'] * len(info['classes'])
    for line in lines:
        rel, label = line.split()
        assert rel.split('/')[0] == info['classes'][int(label)]
        assert Image.open(tmp_path / 'val' / rel).size == (64, 64)
    classes = open(tmp_path / 'meta' / 'classes.txt').read().split()
    assert tuple(classes) == info['classes']


def test_cli_writes_all_formats(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('make_tiny_datasets', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # main() in-process: no second interpreter start-up
    tool.main(['all', '--out-dir', str(tmp_path), '--num-train', '1', '--num-val', '1',
               '--size', '48', '48'])
    assert sorted(os.listdir(tmp_path)) == ['tiny_ade20k', 'tiny_coco', 'tiny_imagenet']
    meta = json.load(open(tmp_path / 'tiny_coco' / 'meta.json'))
    assert meta['size'] == [48, 48] and meta['splits'] == dict(train=1, val=1)
    assert 'tiny_imagenet' in capsys.readouterr().out
