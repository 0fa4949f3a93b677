#!/usr/bin/env python
"""Run a trained model on your own images and save what it predicts.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR \\
        [--device cpu|cuda] [--score-thr 0.3] [--topk 5] [--cfg-options KEY=VALUE ...]
    python tools/infer.py CONFIG MODEL.onnx INPUT [INPUT ...] --out-dir DIR \
        --backend onnxruntime [--threads N]

INPUT: image files or folders (their images, not recursive). By the config's
``default_scope``:

* detection (mmdet ``DetInferencer``): boxes and masks drawn to ``DIR/vis/<image>``,
  predictions as JSON in ``DIR/preds/``;
* segmentation (mmseg ``MMSegInferencer``): the label overlay in ``DIR/vis/``, label maps
  in ``DIR/pred/``;
* classification (mmpretrain ``ImageClassificationInferencer``): the top-k classes
  printed and in ``DIR/predictions.json``, the image with its top class in ``DIR/vis/``.

``--backend onnxruntime`` runs a file written by ``tools/deployment/pytorch2onnx.py``
(classification and segmentation; detection heads are not exported) with ONNX Runtime on
the CPU: the same inferencer does the same pre- and post-processing, only the network
(what the file computes) runs in ONNX Runtime instead of PyTorch, so the outputs are the
PyTorch path's (to float32 rounding).
"""
import argparse
import json
import os
import os.path as osp
import sys

# this checkout's code first, whatever else is installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # tools/: deployment.pytorch2onnx

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
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime'), default='pytorch',
                        help='pytorch (CHECKPOINT: a checkpoint) or onnxruntime (CHECKPOINT: '
                        'an .onnx file from tools/deployment/pytorch2onnx.py)')
    parser.add_argument('--threads', type=int, default=None,
                        help='onnxruntime: intra-op threads (default: its own choice)')
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


def _onnx_network(args, scope_name: str):
    """With ``--backend onnxruntime``: a function ``patch(model)`` that makes the
    inferencer's model compute its network with the ONNX file (the model's own
    extract_feat + head forward are what the file holds: the logits), else None."""
    if args.backend != 'onnxruntime':
        return None
    import torch
    from deployment.pytorch2onnx import TASKS, ort_session, read_metadata
    task = TASKS.get(scope_name)
    if task == 'detection':
        raise UserError('--backend onnxruntime: detection files hold only backbone + neck '
                        '(extract_feat); boxes, masks and NMS need the PyTorch path '
                        '(--backend pytorch)')
    meta = read_metadata(args.checkpoint)
    if meta.get('task') != task:
        raise UserError(f'{args.checkpoint} was exported for {meta.get("task", "an unknown task")} '
                        f'but the config is a {task} config; export it from this config '
                        'with tools/deployment/pytorch2onnx.py')
    session = ort_session(args.checkpoint, args.threads)
    name = session.get_inputs()[0].name

    def network(inputs):
        logits = session.run(None, {name: inputs.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(inputs.device)

    def patch(model):
        # extract_feat -> the file's logits; the head's forward passes them through, so
        # the head's predict (softmax / top-k; resize to the image, argmax) runs as usual
        model.extract_feat = network
        head = model.head if task == 'classification' else model.decode_head
        head.forward = lambda feats: feats
    return patch


def _check_weights_loaded(model, path: str) -> None:
    """The inferencers load checkpoints non-strictly and only log what is missing: refuse
    one that put no weight into the model (an official release file, another model's)."""
    if '://' in path:
        return
    from projects.msvmamba.checkpoint import load_checkpoint_file
    from projects.msvmamba_mm.checkpoints import check_loads_some_weight
    check_loads_some_weight(load_checkpoint_file(path), model, path)


def _infer_mmdet(cfg, args, images):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device,
                               show_progress=False)
    _check_weights_loaded(inferencer.model, args.checkpoint)
    inferencer(images, out_dir=args.out_dir, pred_score_thr=args.score_thr,
               no_save_pred=False)
    return [osp.join(args.out_dir, 'vis'), osp.join(args.out_dir, 'preds')]


def _seg_classes(cfg, model) -> dict:
    """Class names and palette for the overlay: the checkpoint's (``model.dataset_meta``),
    else the config's test dataset's (its ``metainfo``, else its class's ``METAINFO``).
    mmseg's visualizer otherwise draws with Cityscapes' 19 classes whatever the model
    predicts, and mmseg gives a model without them Cityscapes' as well."""
    from mmseg.registry import DATASETS
    from mmseg.utils import get_classes
    meta = getattr(model, 'dataset_meta', None) or {}
    if meta.get('classes') and list(meta['classes']) != list(get_classes('cityscapes')):
        return _classes_and_palette(meta)
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    kind = dataset.get('type')
    meta = dict(getattr(DATASETS.get(kind) if isinstance(kind, str) else kind,
                        'METAINFO', None) or {})
    meta.update(dataset.get('metainfo') or {})
    return _classes_and_palette(meta)


def _classes_and_palette(meta) -> dict:
    """``classes`` and ``palette`` of ``meta`` if it has both, one colour per class."""
    classes, palette = meta.get('classes'), meta.get('palette')
    if not classes or not palette or len(classes) != len(palette):
        return {}
    return dict(classes=list(classes), palette=[list(c) for c in palette])


def _infer_mmseg(cfg, args, images):
    from mmseg.apis import MMSegInferencer
    patch = _onnx_network(args, 'mmseg')
    inferencer = MMSegInferencer(model=cfg, weights=None if patch else args.checkpoint,
                                 device=args.device)
    classes = _seg_classes(cfg, inferencer.model)
    if classes:
        inferencer.model.dataset_meta = classes
        inferencer.visualizer.set_dataset_meta(**classes)
    if patch:
        patch(inferencer.model)
    else:
        _check_weights_loaded(inferencer.model, args.checkpoint)
    inferencer(images, out_dir=args.out_dir)
    return [osp.join(args.out_dir, 'vis'), osp.join(args.out_dir, 'pred')]


def _infer_mmpretrain(cfg, args, images):
    from mmpretrain.apis import ImageClassificationInferencer
    patch = _onnx_network(args, 'mmpretrain')
    inferencer = ImageClassificationInferencer(
        model=cfg, pretrained=False if patch else args.checkpoint, device=args.device)
    if patch:
        patch(inferencer.model)
    else:
        _check_weights_loaded(inferencer.model, args.checkpoint)
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
    if args.backend == 'onnxruntime':
        if args.device not in (None, 'cpu'):
            raise UserError('--backend onnxruntime runs on the CPU; drop --device')
        args.device = 'cpu'
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
