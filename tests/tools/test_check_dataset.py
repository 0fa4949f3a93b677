"""Dataset preflight (projects/msvmamba_mm/dataset_check.py, tools/misc/check_dataset.py,
``tools/train.py --check-data``).

Copies of the session's tiny COCO, ADE20K and ImageNet datasets are broken: a truncated
JPEG, a missing image, a box outside its image, a box of no width with an unknown
category id, an empty mask, a label value outside the classes in a segmentation map, a
classification label outside the classes. Every problem must be named with its file, and
nothing else reported. The library runs in this process; the tool runs once as a
subprocess. About 20 s on a shared 2-core machine (most of it importing mmdet, mmseg and
mmpretrain, and the subprocess).
"""
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from projects.msvmamba_mm import cli, dataset_check
from projects.msvmamba_mm.errors import UserError

COCO, ADE, IMAGENET = 'data/tiny_coco', 'data/tiny_ade20k', 'data/tiny_imagenet'


@pytest.fixture(scope='module')
def broken(tmp_path_factory, workspace):
    """A folder whose ``data/`` holds broken copies of the tiny datasets (the data roots
    of the test configs when run from there)."""
    root = tmp_path_factory.mktemp('broken_data')
    shutil.copytree(workspace / 'data', root / 'data')
    jpeg = root / COCO / 'train2017' / '000001.jpg'
    jpeg.write_bytes(jpeg.read_bytes()[:-200])  # cut short, as by a failed copy
    (root / COCO / 'val2017' / '000001.jpg').unlink()
    ann_file = root / COCO / 'annotations' / 'instances_train2017.json'
    coco = json.loads(ann_file.read_text())
    first = {}  # image id -> its first annotation
    for ann in coco['annotations']:
        first.setdefault(ann['image_id'], ann)
    first[1]['bbox'] = [100, 100, 60, 20]  # the images are 128 x 128: reaches x = 160
    first[3]['bbox'][2] = 0
    first[3]['category_id'] = 99
    first[4]['segmentation'] = []
    ann_file.write_text(json.dumps(coco))

    seg_map = root / ADE / 'annotations' / 'training' / 'ADE_training_00000001.png'
    labels = np.array(Image.open(seg_map))
    labels[:2, :2] = 200  # 150 ADE20K classes: raw values 1..150 (reduce_zero_label)
    Image.fromarray(labels).save(seg_map)

    train_list = root / IMAGENET / 'meta' / 'train.txt'
    lines = train_list.read_text().splitlines()
    assert lines[2] == 'circle/circle_00002.jpg 0'
    lines[2] = 'circle/circle_00002.jpg 7'  # 3 classes
    train_list.write_text('\n'.join(lines) + '\n')
    return root


def _check(config, splits=('train', 'val'), cfg_options=None):
    """(problems as strings, printed report) of check_config in this process."""
    out = io.StringIO()
    problems = dataset_check.check_config(str(config), splits, cfg_options, out=out)
    return [str(p) for p in problems], out.getvalue()


def test_detection_problems(broken, tool_configs, monkeypatch):
    monkeypatch.chdir(broken)
    problems, out = _check(tool_configs['det'])
    jpeg_size = (broken / COCO / 'train2017' / '000001.jpg').stat().st_size
    assert re.fullmatch(rf'{COCO}/train2017/000001\.jpg: image cannot be decoded \(image '
                        rf'file is truncated \(\d+ bytes not processed\); {jpeg_size} '
                        r'bytes\)', problems.pop(1)), out
    assert problems == [
        f'{COCO}/train2017/000000.jpg: annotation id 1: box [100, 100, 160, 120] is not '
        'inside the 128x128 image',
        f'{COCO}/train2017/000002.jpg: annotation id 3: box [52, 40, 52, 82] is '
        'degenerate (width 0, height 42)',
        f'{COCO}/train2017/000002.jpg: annotation id 3: category id 99 is not a category '
        'of the annotation file (ids [1, 2, 3])',
        f'{COCO}/train2017/000003.jpg: annotation id 5: the mask has no polygon',
        f'{COCO}/val2017/000001.jpg: image file not found',
    ], out
    assert out.rstrip().endswith('6 problem(s) in 5 file(s)')


def test_segmentation_and_classification_problems(broken, tool_configs, monkeypatch):
    monkeypatch.chdir(broken)
    problems, _ = _check(tool_configs['seg'])
    assert problems == [
        f'{ADE}/annotations/training/ADE_training_00000001.png: label values 200 are not '
        '0 (ignored: reduce_zero_label), 1..150 (the 150 classes) or the ignore index 255']
    problems, _ = _check(tool_configs['cls'])
    assert problems == [f'{IMAGENET}/train/circle/circle_00002.jpg: label [7] is not a '
                        'class index (0..2)']


def test_clean_datasets_have_no_problems(workspace, tool_configs, monkeypatch):
    monkeypatch.chdir(workspace)
    for kind in ('det', 'seg', 'cls'):
        problems, out = _check(tool_configs[kind])
        assert problems == [], out
        assert out.rstrip().endswith('no problems in the train, val data'), out


def test_tool_lists_problems_and_exits_1(broken, tool_configs, tool_runner):
    run = tool_runner(broken)('misc/check_dataset.py', tool_configs['det'], '--workers', '2')
    assert run.rc == 1, run.out[-3000:]
    assert f'  {COCO}/train2017/000001.jpg: image cannot be decoded (image file is ' \
        'truncated' in run.out
    assert f'  {COCO}/val2017/000001.jpg: image file not found\n' in run.out
    assert '] 4/4, ' in run.out and '] 2/2, ' in run.out  # the progress bars
    assert run.out.rstrip().endswith('6 problem(s) in 5 file(s)')


def test_train_check_data_refuses_to_start(broken, tool_configs, monkeypatch, capsys):
    monkeypatch.chdir(broken)
    work_dir = broken / 'work_dir'
    rc = cli.train_main([str(tool_configs['cls']), '--check-data', '--work-dir',
                         str(work_dir)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert f'{IMAGENET}/train/circle/circle_00002.jpg: label [7] is not a class index' in out
    assert err.strip().splitlines()[-1].startswith(
        'error: --check-data: 1 problem(s) in the data, listed above')
    assert not work_dir.exists()  # refused before the Runner was built


def test_config_mistakes_are_user_errors(workspace, tool_configs, monkeypatch):
    monkeypatch.chdir(workspace)
    with pytest.raises(UserError, match=r'^cannot build train_dataloader.dataset of the '
                       r'config: KeyError: .*NoSuchDataset'):
        _check(tool_configs['cls'], ['train'],
               {'train_dataloader.dataset.type': 'NoSuchDataset'})
    with pytest.raises(UserError, match=r'^dataset not found: nowhere '):
        _check(tool_configs['cls'], ['val'], {'val_dataloader.dataset.data_root': 'nowhere'})


BOX, MASK, LABEL = (dataset_check.box_problem, dataset_check.mask_problem,
                    dataset_check.label_problem)


@pytest.mark.parametrize('rule,args,expected', [
    (BOX, ([0, 0, 10, 10], 10, 10), None),
    (BOX, ([-0.5, 0, 10.9, 10], 10, 10), None),  # rounding in the files: 1 px
    (BOX, ([0, 0, math.nan, 4], 10, 10), 'box [0, 0, nan, 4] is not four finite numbers'),
    (BOX, ([0, 0, 0.5, 4], 10, 10, 1), 'box [0, 0, 0.5, 4] is degenerate (width 0.5, '
     'height 4)'),
    (MASK, ([[0, 0, 4, 0, 4, 4]], 10, 10), None),
    (MASK, ([[0, 0, 4, 0]], 10, 10), 'polygon 0 has 4 coordinates (at least 3 x, y points)'),
    (MASK, ([[0, 0, 2, 2, 4, 4]], 10, 10), 'polygon 0 has zero area'),
    (MASK, (dict(size=[10, 12], counts='ab'), 10, 10),
     'the RLE mask is [10, 12] (h, w), the image [10, 10]'),
    (LABEL, (np.array([0, 3]), 3), 'label [3] is not a class index (0..2)'),
    (LABEL, (1.5, 3), 'label 1.5 is not an integer class index'),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_annotation_rules(rule, args, expected):
    assert rule(*args) == expected
