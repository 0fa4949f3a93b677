"""The int8 ONNX file against the float32 one: top-1 on a trained classifier
(:func:`int8_accuracy`) and speed (:func:`int8_runner`, :func:`int8_speed_lines`, for
``tools/analysis_tools/benchmark_onnx.py --int8``).

Seeded or random weights rank the classes arbitrarily (near-ties everywhere), so the
comparison needs a model that has learnt something. :func:`int8_accuracy`, the one
command ``tools/analysis_tools/benchmark_onnx.py --int8-accuracy WORK_DIR``:

1. draws a tiny ImageNet-format set (:func:`.tiny_data.make_imagenet`: the five shape
   kinds, each class in its own colour, 32 x 32, :data:`TRAIN_PER_CLASS` /
   :data:`VAL_PER_CLASS` images per class; in random colours Nano stayed at chance for
   900 steps) under
   ``WORK_DIR/data`` unless it is there;
2. trains MSVMamba-Nano with ``tools/train.py``'s code (:func:`.cli.train_main`) on it:
   ``configs/msvmamba_n_in1k.py`` with only the data, the head's class count, the schedule
   (a few epochs, no EMA) and the augmentation (flips only; no Mixup / CutMix, which a
   few hundred steps do not survive) changed, written as ``WORK_DIR/nano_tiny_imagenet.py``;
   skipped when its last checkpoint exists;
3. exports the checkpoint with dynamic N, H, W and quantizes it
   (:func:`.deploy.export_config` with ``quantize='int8'``, what ``pytorch2onnx.py
   --quantize int8`` runs);
4. runs the val split through PyTorch (``model(x, mode='tensor')``) and both files in ONNX
   Runtime, each image normalised from the file's metadata (:func:`.deploy.normalise`):
   top-1 of each, the share of images on which int8 and float32 pick the same class, and
   the logits' relative error max |int8 - float32| / max |float32| over the whole split.
"""
import os
import os.path as osp
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

from msvmamba_ops.testing import rel_error

from . import deploy, timing
from .errors import UserError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE_CONFIG = osp.join(REPO, 'configs', 'msvmamba_n_in1k.py')
TRAIN_PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE = 160, 120, (32, 32)
EPOCHS, BATCH_SIZE, LR = 8, 32, 2e-3

CONFIG_TEMPLATE = """\
# {base} trained briefly on a tiny ImageNet-format set of drawn shapes, for the int8
# accuracy check (projects/msvmamba_mm/quantized.py wrote this file). Only the data,
# the class count, the schedule and the augmentation differ from the real config.
_base_ = {base!r}

classes = {classes!r}
model = dict(
    backbone=dict(drop_path_rate=0.0),
    head=dict(num_classes=len(classes), topk=(1, )),
    train_cfg=None)  # no Mixup / CutMix batch augments
data_preprocessor = dict(num_classes=len(classes))
_dataset = dict(data_root={root!r}, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size={batch_size}, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs')]))
val_dataloader = dict(
    batch_size=50, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, pipeline=[dict(type='LoadImageFromFile'),
                                       dict(type='PackInputs')]))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr={lr}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end={epochs},
         eta_min_ratio=0.01, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs={epochs}, val_begin={epochs} + 1)
custom_hooks = []  # the recipe's EMA (decay 0.9999) would keep the initial weights
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval={epochs}))
randomness = dict(seed=0, diff_rank_seed=False)
env_cfg = dict(cudnn_benchmark=False)
"""


def make_data(root: str) -> None:
    """The tiny set of step 1 under ``root`` (kept if its ``meta.json`` is there)."""
    from .tiny_data import SHAPE_KINDS, make_imagenet
    if not osp.isfile(osp.join(root, 'meta.json')):
        make_imagenet(root, dict(train=TRAIN_PER_CLASS, val=VAL_PER_CLASS), IMAGE_SIZE,
                      classes=SHAPE_KINDS, class_colors=True)


def train(work_dir: str, data_root: str, epochs: int = EPOCHS) -> tuple:
    """Step 2: ``(config, checkpoint)``; trains unless the checkpoint exists."""
    from .cli import train_main
    from .tiny_data import SHAPE_KINDS
    config = osp.join(work_dir, 'nano_tiny_imagenet.py')
    with open(config, 'w') as f:
        f.write(CONFIG_TEMPLATE.format(base=BASE_CONFIG, classes=SHAPE_KINDS,
                                       root=osp.abspath(data_root), batch_size=BATCH_SIZE,
                                       lr=LR, epochs=epochs))
    train_dir = osp.join(work_dir, 'train')
    ckpt = osp.join(train_dir, f'epoch_{epochs}.pth')
    if not osp.isfile(ckpt):
        start = time.time()
        if train_main([config, '--work-dir', train_dir]) != 0 or not osp.isfile(ckpt):
            raise UserError(f'training {config} did not write {ckpt}; see its log in '
                            f'{train_dir}')
        print(f'trained {config} in {time.time() - start:.0f} s: {ckpt}')
    return config, ckpt


def val_images(data_root: str) -> tuple:
    """``(paths, labels)`` of the val split (``meta/val.txt``)."""
    paths, labels = [], []
    with open(osp.join(data_root, 'meta', 'val.txt')) as f:
        for line in f:
            rel, label = line.split()
            paths.append(osp.join(data_root, 'val', rel))
            labels.append(int(label))
    return paths, torch.tensor(labels)


def compare(files: Dict[str, str], model: Optional[torch.nn.Module], data_root: str,
            threads: int = 2, batch: int = 50) -> Dict:
    """Step 4 on ``files`` (``{name: ONNX file}``, the float32 one first) and, if given,
    the PyTorch ``model``: ``dict(images, top1={name: %}, logits={name: tensor},
    agreement={name: % same class as the first file}, rel_err={name: vs the first})``."""
    paths, labels = val_images(data_root)
    meta = deploy.read_metadata(next(iter(files.values())))
    x = torch.cat([deploy.normalise(p, meta) for p in paths])
    logits = {}
    if model is not None:
        with torch.no_grad():
            logits['pytorch'] = torch.cat([model(part, mode='tensor')
                                           for part in x.split(batch)])
    for name, path in files.items():
        run = deploy.ort_runner(path, threads)
        logits[name] = torch.cat([torch.from_numpy(run(part)) for part in x.split(batch)])
    first = logits[next(iter(files))]
    top = {name: out.argmax(1) for name, out in logits.items()}
    return dict(images=len(labels), logits=logits,
                top1={k: (v == labels).double().mean().item() * 100 for k, v in top.items()},
                agreement={k: (v == first.argmax(1)).double().mean().item() * 100
                           for k, v in top.items()},
                rel_err={k: rel_error(v, first) for k, v in logits.items()})


def report(result: Dict, float_name: str = 'float32', int8_name: str = 'int8') -> List[str]:
    """The lines ``benchmark_onnx.py --int8-accuracy`` prints."""
    top1, agree, err = result['top1'], result['agreement'], result['rel_err']
    lines = [f'val top-1 over {result["images"]} images: '
             + ', '.join(f'{k} {v:.2f}%' for k, v in top1.items())]
    lines.append(f'int8 vs float32 (onnxruntime): top-1 {top1[int8_name] - top1[float_name]:+.2f} '
                 f'points (goal: within 1), same class on {agree[int8_name]:.2f}% of the '
                 f'images, logits rel err {err[int8_name]:.2e} (max |int8 - float32| / '
                 'max |float32| over the split)')
    if 'pytorch' in err:
        lines.append(f'float32 onnxruntime vs pytorch: logits rel err {err["pytorch"]:.2e}')
    return lines


def int8_accuracy(work_dir: str, threads: int = 2, epochs: int = EPOCHS) -> Dict:
    """Steps 1-4 (module docstring) in ``work_dir``; prints :func:`report` and returns
    :func:`compare`'s result."""
    os.makedirs(work_dir, exist_ok=True)
    data_root = osp.join(work_dir, 'data', 'tiny_imagenet_shapes')
    make_data(data_root)
    config, ckpt = train(work_dir, data_root, epochs)
    float_path = osp.join(work_dir, 'nano_tiny_imagenet.onnx')
    exported = deploy.export_config(config, ckpt, float_path, shape=IMAGE_SIZE,
                                    dynamic=True, quantize='int8')
    result = compare({'float32': float_path, 'int8': deploy.int8_path(float_path)},
                     exported['model'], data_root, threads)
    print('\n'.join(report(result)))
    return result


def int8_runner(float_path: str, threads: int) -> Callable:
    """``run(x)`` on ONNX Runtime for ``float_path`` quantized as ``pytorch2onnx.py
    --quantize int8`` does (:func:`.deploy.quantize_int8`, into a temporary folder)."""
    start = time.time()
    path = deploy.int8_path(osp.join(tempfile.mkdtemp(), osp.basename(float_path)))
    deploy.quantize_int8(float_path, path)
    print(f'quantized {float_path} to int8 in {time.time() - start:.0f} s: {path}')
    return deploy.ort_runner(path, threads)


def int8_speed_lines(row: Dict, int8: str = 'onnxruntime int8',
                     float32: str = 'onnxruntime') -> List[str]:
    """The int8 line of ``benchmark_onnx.py --int8`` for one row of
    :func:`.speed.compare_runtimes`: its speed-up over the float32 file, same run."""
    med = {name: timing.median(row['times'][name]) for name in (int8, float32)}
    return [f'  {int8}: {med[float32] / med[int8]:.2f}x {float32} float32 (goal >= 1.5x); '
            f'max |int8 - pytorch fused| / max |pytorch fused| {row["errors"][int8]:.1e} '
            '(random weights and input; top-1 on a trained model: --int8-accuracy)']
