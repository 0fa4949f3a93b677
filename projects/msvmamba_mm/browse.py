"""The ground truth of a config's dataset, after its data pipeline, drawn to PNG files
(``tools/analysis_tools/browse_dataset.py``).

Works for detection (boxes + masks), segmentation (label overlay) and classification
(class name) configs: the config's ``default_scope`` picks the package, whose visualizer
(the config's ``visualizer``) draws. The images are what the model receives, i.e. after
the phase's pipeline (resizing, flipping, cropping, ...).

Public API: :func:`browse_dataset`.
"""
import os
import os.path as osp
from typing import Optional

from .errors import UserError
from .tooling import load_scoped_config


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


def browse_dataset(config: str, output_dir: str, phase: str = 'train', max_num: int = 10,
                   cfg_options: Optional[dict] = None) -> int:
    """Draw the first ``max_num`` samples of ``config``'s ``phase`` dataloader's dataset to
    ``output_dir/<index>_<image name>.png``; returns how many were drawn."""
    if max_num < 1:
        raise UserError('--max-num must be at least 1')
    cfg, scope = load_scoped_config(config, cfg_options)
    from mmengine.registry import DATASETS, VISUALIZERS
    loader = cfg.get(f'{phase}_dataloader')
    if not loader:
        raise UserError(f'{config} has no {phase}_dataloader')
    from .datasets import check_dataset_paths
    check_dataset_paths(cfg, [f'{phase}_dataloader'])
    dataset = DATASETS.build(loader.dataset)
    # a name of our own: mmengine returns an existing visualizer of the same name
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name=f'browse_dataset_{scope.name}_{id(dataset)}'))
    visualizer.dataset_meta = dataset.metainfo
    os.makedirs(output_dir, exist_ok=True)
    count = min(max_num, len(dataset))
    for i in range(count):
        item = dataset[i]
        sample = item['data_samples']
        path = sample.metainfo.get('img_path') or f'{i:06d}'
        name = f'{i:06d}_{osp.splitext(osp.basename(path))[0]}'
        _draw(visualizer, scope.name, name, _image_rgb(item['inputs']), sample,
              osp.join(output_dir, name + '.png'))
    print(f'drew {count} of {len(dataset)} {phase} samples to {output_dir}')
    return count
