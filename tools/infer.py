#!/usr/bin/env python
"""Run a trained model on your own images and save what it predicts.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR \\
        [--device cpu|cuda] [--score-thr 0.3] [--topk 5] [--cfg-options KEY=VALUE ...]

INPUT: image files or folders (their images, not recursive). By the config's
``default_scope``:

* detection (mmdet ``DetInferencer``): boxes and masks drawn to ``DIR/vis/<image>``,
  predictions as JSON in ``DIR/preds/``;
* segmentation (mmseg ``MMSegInferencer``): the label overlay in ``DIR/vis/``, label maps
  in ``DIR/pred/``;
* classification (mmpretrain ``ImageClassificationInferencer``): the top-k classes
  printed and in ``DIR/predictions.json``, the image with its top class in ``DIR/vis/``.
"""
import argparse
import json
import os
import os.path as osp
import sys

# this checkout's code first, whatever else is installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from projects.msvmamba_mm.errors import UserError  # noqa: E402
from projects.msvmamba_mm.tooling import (  # noqa: E402
    add_config_arguments, load_scoped_config, run_main)

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/infer.py',
        description='Predict on images with a detection, segmentation or classification '
        'checkpoint and save the drawn results.')
    add_config_arguments(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders')
    parser.add_argument('--out-dir', required=True, help='folder for the results')
    parser.add_argument('--device', help='cpu, cuda, cuda:1, ... (default: cuda if '
                        'available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes with at least this score (default 0.3)')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: classes to report (default 5)')
    return parser.parse_args(argv)


def collect_images(inputs):
    """Image paths of ``inputs`` (files as given, folders' images sorted)."""
    images = []
    for item in inputs:
        if osp.isdir(item):
            found = sorted(osp.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise UserError(f'no images ({", ".join(IMAGE_EXTS)}) in folder {item}')
            images += found
        elif osp.isfile(item):
            images.append(item)
        else:
            raise UserError(f'input not found: {item}')
    return images


def _infer_mmdet(cfg, args, images):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device,
                               show_progress=False)
    inferencer(images, out_dir=args.out_dir, pred_score_thr=args.score_thr,
               no_save_pred=False)
    return [osp.join(args.out_dir, 'vis'), osp.join(args.out_dir, 'preds')]


def _infer_mmseg(cfg, args, images):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device)
    inferencer(images, out_dir=args.out_dir)
    return [osp.join(args.out_dir, 'vis'), osp.join(args.out_dir, 'pred')]


def _infer_mmpretrain(cfg, args, images):
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=args.checkpoint,
                                               device=args.device)
    vis_dir = osp.join(args.out_dir, 'vis')
    results = inferencer(images, show_dir=vis_dir)
    classes = inferencer.classes or []
    report = []
    for path, result in zip(images, results):
        scores = result['pred_scores']
        order = scores.argsort()[::-1][:args.topk]
        top = [dict(label=int(i), score=float(scores[i]),
                    **({'class': classes[i]} if i < len(classes) else {})) for i in order]
        report.append(dict(image=path, topk=top))
        print(f'{path}: ' + ', '.join(f'{t.get("class", t["label"])} {t["score"]:.3f}'
                                      for t in top))
    out = osp.join(args.out_dir, 'predictions.json')
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    return [vis_dir, out]


INFER = {'mmdet': _infer_mmdet, 'mmseg': _infer_mmseg, 'mmpretrain': _infer_mmpretrain}


def _main(argv=None):
    args = parse_args(argv)
    if not ('://' in args.checkpoint or osp.isfile(args.checkpoint)):
        raise UserError(f'checkpoint not found: {args.checkpoint}')
    images = collect_images(args.inputs)
    cfg, scope = load_scoped_config(args.config, args.cfg_options)
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    os.makedirs(args.out_dir, exist_ok=True)
    written = INFER[scope.name](cfg, args, images)
    print(f'{len(images)} image(s) done; results in ' + ', '.join(written))


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
