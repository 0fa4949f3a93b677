"""Predictions of a trained model on the user's images, saved and drawn
(``tools/infer.py``).

By the config's ``default_scope``:

* detection (mmdet ``DetInferencer``): boxes and masks drawn to ``DIR/vis/<image>``,
  predictions as JSON in ``DIR/preds/``;
* segmentation (mmseg ``MMSegInferencer``): the label overlay in ``DIR/vis/``, label maps
  in ``DIR/pred/``;
* classification (mmpretrain ``ImageClassificationInferencer``): the top-k classes
  printed and in ``DIR/predictions.json``, the image with its top class in ``DIR/vis/``.

``backend='onnxruntime'`` runs a file written by :func:`.deploy.export_config`
(classification and segmentation; detection heads are not exported) with ONNX Runtime on
the CPU: the same inferencer does the same pre- and post-processing, only the network
runs in ONNX Runtime (:func:`.deploy.onnx_network`), so the outputs are the PyTorch
path's (to float32 rounding).

Public API: :func:`infer`, :func:`collect_images`.
"""
import json
import os
import os.path as osp
import types
from typing import List, Optional, Sequence

from .errors import UserError
from .tooling import load_scoped_config

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')



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


def _check_weights_loaded(model, path: str) -> None:
    """The inferencers load checkpoints non-strictly and only log what is missing: refuse
    one that put no weight into the model (an official release file, another model's)."""
    if '://' in path:
        return
    from projects.msvmamba.checkpoint import load_checkpoint_file
    from projects.msvmamba_mm.checkpoints import check_loads_some_weight
    check_loads_some_weight(load_checkpoint_file(path), model, path)


def _amp(inferencer, req) -> None:
    """``--amp``: backbone + neck under autocast, the rest float32 (amp_inference)."""
    if req.amp:
        from .amp_inference import autocast_features
        autocast_features(inferencer.model)


def _infer_mmdet(cfg, req, images):
    from mmdet.apis import DetInferencer
    _onnx_patch(req, 'mmdet')  # the onnxruntime backend refuses detection, with the reason
    inferencer = DetInferencer(model=cfg, weights=req.checkpoint, device=req.device,
                               show_progress=False)
    _check_weights_loaded(inferencer.model, req.checkpoint)
    _amp(inferencer, req)
    inferencer(images, out_dir=req.out_dir, pred_score_thr=req.score_thr,
               no_save_pred=False)
    return [osp.join(req.out_dir, 'vis'), osp.join(req.out_dir, 'preds')]


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


def _infer_mmseg(cfg, req, images):
    from mmseg.apis import MMSegInferencer
    patch = _onnx_patch(req, 'mmseg')
    inferencer = MMSegInferencer(model=cfg, weights=None if patch else req.checkpoint,
                                 device=req.device)
    classes = _seg_classes(cfg, inferencer.model)
    if classes:
        inferencer.model.dataset_meta = classes
        inferencer.visualizer.set_dataset_meta(**classes)
    if patch:
        patch(inferencer.model)
    else:
        _check_weights_loaded(inferencer.model, req.checkpoint)
    _amp(inferencer, req)
    inferencer(images, out_dir=req.out_dir)
    return [osp.join(req.out_dir, 'vis'), osp.join(req.out_dir, 'pred')]


def _infer_mmpretrain(cfg, req, images):
    from mmpretrain.apis import ImageClassificationInferencer
    patch = _onnx_patch(req, 'mmpretrain')
    inferencer = ImageClassificationInferencer(
        model=cfg, pretrained=False if patch else req.checkpoint, device=req.device)
    if patch:
        patch(inferencer.model)
    else:
        _check_weights_loaded(inferencer.model, req.checkpoint)
    _amp(inferencer, req)
    vis_dir = osp.join(req.out_dir, 'vis')
    results = inferencer(images, show_dir=vis_dir)
    classes = inferencer.classes or []
    report = []
    for path, result in zip(images, results):
        scores = result['pred_scores']
        order = scores.argsort()[::-1][:req.topk]
        top = [dict(label=int(i), score=float(scores[i]),
                    **({'class': classes[i]} if i < len(classes) else {})) for i in order]
        report.append(dict(image=path, topk=top))
        print(f'{path}: ' + ', '.join(f'{t.get("class", t["label"])} {t["score"]:.3f}'
                                      for t in top))
    out = osp.join(req.out_dir, 'predictions.json')
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    return [vis_dir, out]


INFER = {'mmdet': _infer_mmdet, 'mmseg': _infer_mmseg, 'mmpretrain': _infer_mmpretrain}



def infer(config: str, checkpoint: str, inputs: Sequence[str], out_dir: str,
          device: Optional[str] = None, score_thr: float = 0.3, topk: int = 5,
          backend: str = 'pytorch', threads: Optional[int] = None,
          cfg_options: Optional[dict] = None, amp: bool = False) -> List[str]:
    """Predict on ``inputs`` (image files or folders) with ``config``'s model and
    ``checkpoint`` (``backend='onnxruntime'``: an ONNX file of that model, run with
    ``threads`` intra-op threads); returns the folders / files written under ``out_dir``.
    ``device`` defaults to cuda if available, else cpu. ``amp``: backbone + neck under
    autocast (bf16 on the CPU, float16 on CUDA; :mod:`.amp_inference`)."""
    if not ('://' in checkpoint or osp.isfile(checkpoint)):
        raise UserError(f'checkpoint not found: {checkpoint}')
    images = collect_images(inputs)
    cfg, scope = load_scoped_config(config, cfg_options)
    if backend == 'onnxruntime':
        if device not in (None, 'cpu'):
            raise UserError('--backend onnxruntime runs on the CPU; drop --device')
        device = 'cpu'
        if amp:
            raise UserError('--amp applies to the pytorch backend; drop it with '
                            '--backend onnxruntime')
    if device is None:
        import torch
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    os.makedirs(out_dir, exist_ok=True)
    req = types.SimpleNamespace(checkpoint=checkpoint, out_dir=out_dir, device=device,
                                score_thr=score_thr, topk=topk, backend=backend,
                                threads=threads, amp=amp)
    written = INFER[scope.name](cfg, req, images)
    print(f'{len(images)} image(s) done; results in ' + ', '.join(written))
    return written


def _onnx_patch(req, scope_name: str):
    """With the onnxruntime backend: :func:`.deploy.onnx_network`'s model patch, else None."""
    if req.backend != 'onnxruntime':
        return None
    from .deploy import TASKS, onnx_network
    return onnx_network(req.checkpoint, TASKS.get(scope_name), req.threads)
