"""Checks, before anything is built, that the files a config reads exist: the datasets
of its dataloaders and the backbone's pretrained checkpoint. A newcomer's first run
otherwise ends in a long traceback from deep inside a dataset or checkpoint loader."""
import os.path as osp
from typing import Iterable, List, Optional

from .errors import UserError

# what `make_tiny_datasets.py` calls each dataset type's format
_TINY_FORMATS = (('Coco', 'coco', 'tiny_coco'), ('ADE', 'ade20k', 'tiny_ade20k'),
                 ('ImageNet', 'imagenet', 'tiny_imagenet'))


def _is_remote(path: str) -> bool:
    return '://' in path


def leaf_datasets(dataset_cfg) -> List[dict]:
    """The datasets inside wrappers (RepeatDataset, ConcatDataset, ...)."""
    if dataset_cfg is None:
        return []
    if 'datasets' in dataset_cfg:
        return [d for sub in dataset_cfg['datasets'] for d in leaf_datasets(sub)]
    if 'dataset' in dataset_cfg:
        return leaf_datasets(dataset_cfg['dataset'])
    return [dataset_cfg]


def _hint(dataset_type: str) -> str:
    for prefix, fmt, folder in _TINY_FORMATS:
        if str(dataset_type).startswith(prefix):
            return (f'; for a tiny stand-in in the same format run `python '
                    f'tools/dataset_converters/make_tiny_datasets.py {fmt} --out-dir data` '
                    f'(writes data/{folder}/) and point the dataloaders\' data_root (and '
                    'an evaluator\'s ann_file) there, as configs/quick_start/ does; or try '
                    '`python tools/quick_start.py`')
    return ''


def _paths(dataset: dict) -> Iterable[tuple]:
    """(what, path) of every local file or folder the dataset config names."""
    root = dataset.get('data_root') or ''
    if root:
        yield 'data_root', root
    ann = dataset.get('ann_file') or ''
    if ann:
        yield 'ann_file', ann if osp.isabs(ann) or _is_remote(ann) else osp.join(root, ann)
    prefix = dataset.get('data_prefix') or {}
    items = prefix.items() if isinstance(prefix, dict) else [('', prefix)]
    for key, sub in items:
        if isinstance(sub, str) and sub:
            yield (f'data_prefix.{key}' if key else 'data_prefix',
                   sub if osp.isabs(sub) or _is_remote(sub) else osp.join(root, sub))


def check_dataset_paths(cfg, loaders: Iterable[str]) -> None:
    """Raise :class:`UserError` naming the first missing dataset path of ``loaders``
    (e.g. ``['train_dataloader', 'val_dataloader']``) and how to get the data."""
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        for dataset in leaf_datasets(loader_cfg.get('dataset')):
            if dataset.get('backend_args') or dataset.get('file_client_args'):
                continue  # read through a storage backend (petrel, http, ...)
            for what, path in _paths(dataset):
                if _is_remote(path) or osp.exists(path):
                    continue
                raise UserError(
                    f'dataset not found: {path} ({loader}.dataset.{what}; run from the '
                    f'folder the config\'s relative paths start at, usually the repository '
                    f'root). Put the {dataset.get("type", "")} data there (see '
                    f'configs/README.md) or point to it with --cfg-options '
                    f'{loader}.dataset.data_root=PATH/{_hint(dataset.get("type", ""))}')


def check_pretrained(cfg) -> None:
    """Raise :class:`UserError` when ``model.backbone.init_cfg`` names a local pretrained
    checkpoint that does not exist (it is read when training starts)."""
    init_cfg: Optional[dict] = (cfg.get('model') or {}).get('backbone', {}).get('init_cfg')
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return
    path = init_cfg.get('checkpoint') or ''
    if not path or _is_remote(path) or osp.isfile(path):
        return
    raise UserError(
        f'backbone checkpoint not found: {path} (model.backbone.init_cfg.checkpoint). '
        'Download the ImageNet-1k weights (configs/README.md, "Getting the official '
        'weights") to that path, point to them with --cfg-options '
        'model.backbone.init_cfg.checkpoint=PATH, or train from scratch with '
        '--cfg-options model.backbone.init_cfg=None')
