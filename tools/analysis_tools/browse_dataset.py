#!/usr/bin/env python
"""Draw the ground truth of a config's dataset, after its data pipeline, to PNG files.

    python tools/analysis_tools/browse_dataset.py CONFIG --output-dir DIR \\
        [--phase train|val|test] [--max-num N] [--cfg-options KEY=VALUE ...]

Works for detection (boxes + masks), segmentation (label overlay) and classification
(class name) configs: the config's ``default_scope`` picks the package, whose visualizer
(the config's ``visualizer``) draws. The images are what the model receives, i.e. after
the phase's pipeline (resizing, flipping, cropping, ...).
"""
import argparse
import os
import os.path as osp
import sys

# this checkout's code first, whatever else is installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from projects.msvmamba_mm.errors import UserError  # noqa: E402
from projects.msvmamba_mm.tooling import (  # noqa: E402
    add_config_arguments, load_scoped_config, run_main)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/analysis_tools/browse_dataset.py',
        description="Draw the ground truth of a config's dataset to PNG files.")
    add_config_arguments(parser)
    parser.add_argument('--output-dir', required=True, help='folder for the PNG files')
    parser.add_argument('--phase', choices=('train', 'val', 'test'), default='train',
                        help='which dataloader\'s dataset and pipeline (default train)')
    parser.add_argument('--max-num', type=int, default=10,
                        help='draw at most this many samples (default 10)')
    return parser.parse_args(argv)


def _image_rgb(inputs):
    """HWC uint8 RGB image from a packed CHW BGR tensor."""
    import numpy as np
    image = inputs.permute(1, 2, 0).numpy()
    if image.shape[2] == 3:
        image = image[..., ::-1]
    return np.ascontiguousarray(image.clip(0, 255).astype(np.uint8))


def _plain_det_instances(data_sample):
    """Boxes as a tensor and masks as a bool array: what DetLocalVisualizer draws
    (the pipeline packs HorizontalBoxes and BitmapMasks/PolygonMasks)."""
    from mmdet.structures.bbox import BaseBoxes
    from mmdet.models.utils import mask2ndarray
    gt = data_sample.gt_instances
    if isinstance(gt.get('bboxes'), BaseBoxes):
        gt.bboxes = gt.bboxes.tensor
    if gt.get('masks') is not None:
        gt.masks = mask2ndarray(gt.masks).astype(bool)
    return data_sample


def _draw(visualizer, scope_name, name, image, data_sample, out_file):
    if scope_name == 'mmdet':
        data_sample = _plain_det_instances(data_sample)
    if scope_name == 'mmpretrain':
        visualizer.visualize_cls(image, data_sample, draw_gt=True, draw_pred=False,
                                 name=name, out_file=out_file)
    else:  # mmdet DetLocalVisualizer, mmseg SegLocalVisualizer
        visualizer.add_datasample(name, image, data_sample, draw_gt=True, draw_pred=False,
                                  show=False, out_file=out_file)


def _main(argv=None):
    args = parse_args(argv)
    if args.max_num < 1:
        raise UserError('--max-num must be at least 1')
    cfg, scope = load_scoped_config(args.config, args.cfg_options)
    from mmengine.registry import DATASETS, VISUALIZERS
    loader = cfg.get(f'{args.phase}_dataloader')
    if not loader:
        raise UserError(f'{args.config} has no {args.phase}_dataloader')
    from projects.msvmamba_mm.datasets import check_dataset_paths
    check_dataset_paths(cfg, [f'{args.phase}_dataloader'])
    dataset = DATASETS.build(loader.dataset)
    # a name of our own: mmengine returns an existing visualizer of the same name
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name=f'browse_dataset_{scope.name}_{id(dataset)}'))
    visualizer.dataset_meta = dataset.metainfo
    os.makedirs(args.output_dir, exist_ok=True)
    count = min(args.max_num, len(dataset))
    for i in range(count):
        item = dataset[i]
        sample = item['data_samples']
        path = sample.metainfo.get('img_path') or f'{i:06d}'
        name = f'{i:06d}_{osp.splitext(osp.basename(path))[0]}'
        _draw(visualizer, scope.name, name, _image_rgb(item['inputs']), sample,
              osp.join(args.output_dir, name + '.png'))
    print(f'drew {count} of {len(dataset)} {args.phase} samples to {args.output_dir}')


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
