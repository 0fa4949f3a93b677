"""Shared plumbing of the smaller tools (``tools/misc/print_config.py``,
``tools/analysis_tools/browse_dataset.py``, ``tools/infer.py``): a config loaded with its
package set up, the arguments that load it, and (from :mod:`.cli`) ``run_main``, the
``error: ...`` / exit status 2 convention of the main tools."""
import argparse
from typing import Optional, Tuple

from mmengine.config import Config, DictAction

from . import cli
from .cli import run_main
from .scopes import Scope, scope_of

__all__ = ['load_scoped_config', 'build_scoped_model', 'add_config_arguments', 'image_shape',
           'run_main']


def load_scoped_config(path: str, cfg_options: Optional[dict] = None) -> Tuple[Config, Scope]:
    """``(cfg, scope)`` of a config file, with the package of its ``default_scope``
    imported, its modules registered and the scope made the default one."""
    from mmengine.registry import init_default_scope
    cfg = cli.load_config(path, cfg_options)
    scope = scope_of(cfg, path)
    scope.register_modules()
    init_default_scope(scope.name)
    return cfg, scope


def build_scoped_model(cfg: Config, scope: Scope):
    """The config's ``model``, built in the registry of its scope's package (mmpretrain,
    mmdet or mmseg)."""
    import importlib
    registry = importlib.import_module(f'{scope.package}.registry')
    return registry.MODELS.build(cfg.model)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional ``config`` and ``--cfg-options``, as tools/train.py takes them."""
    parser.add_argument('config', help='config file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings, as for tools/train.py')


def image_shape(parser: argparse.ArgumentParser, sizes) -> list:
    """``[H, W]`` from a ``--shape`` of one size (square) or two; else a usage error."""
    if len(sizes) == 1:
        return [sizes[0], sizes[0]]
    if len(sizes) != 2:
        parser.error('--shape takes H W or a single size')
    return list(sizes)
