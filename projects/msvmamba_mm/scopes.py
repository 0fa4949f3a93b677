"""What the tools need to know about each OpenMMLab package, keyed by the config's
``default_scope``: which package registers the modules, which metric dumps predictions
(``--out``) and how its visualization hook saves drawn predictions (``--show-dir``)."""
import importlib
from dataclasses import dataclass
from typing import Callable, Dict

from mmengine.config import Config

from .errors import UserError


def _visualization_hook(cfg: Config, scope: str) -> dict:
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise UserError(f'--show-dir needs a visualization hook in the config '
                        f'(default_hooks.visualization, a {scope} visualization hook)')
    return hook


# Every test image is drawn (interval=1): DetVisualizationHook does so in tests anyway,
# the mmseg and mmpretrain hooks draw one image per `interval` (50 and 5000 by default).
def _show_dir_mmdet(cfg: Config, show_dir: str) -> None:
    hook = _visualization_hook(cfg, 'mmdet')  # DetVisualizationHook
    hook.update(draw=True, test_out_dir=show_dir)


def _show_dir_mmseg(cfg: Config, show_dir: str) -> None:
    # SegVisualizationHook draws through the visualizer's backends, which save under the
    # visualizer's save_dir (<show_dir>/vis_image/*.png with LocalVisBackend)
    hook = _visualization_hook(cfg, 'mmseg')
    hook.update(draw=True, interval=1)
    cfg.visualizer['save_dir'] = show_dir


def _show_dir_mmpretrain(cfg: Config, show_dir: str) -> None:
    hook = _visualization_hook(cfg, 'mmpretrain')  # mmpretrain VisualizationHook
    hook.update(enable=True, out_dir=show_dir, interval=1)


@dataclass(frozen=True)
class Scope:
    name: str
    package: str  # import name of the package that owns the scope
    dump_metric: str  # 'module:Class' of the metric that writes predictions to a .pkl
    enable_show_dir: Callable[[Config, str], None]
    # whether the visualization hook can draw test-time augmented batches: mmpretrain's
    # draws the batch tensors, which TTA turns into lists of augmented views
    show_dir_with_tta: bool = True

    def register_modules(self) -> None:
        """Import the package and register all its modules (its register_all_modules)."""
        try:
            utils = importlib.import_module(f'{self.package}.utils')
        except ImportError as e:
            raise UserError(f"default_scope '{self.name}' needs the {self.package} package, "
                            f'which does not import: {e}') from e
        utils.register_all_modules(init_default_scope=False)

    def build_dump_metric(self, out_file: str):
        module, cls = self.dump_metric.split(':')
        return getattr(importlib.import_module(module), cls)(out_file_path=out_file)


SCOPES: Dict[str, Scope] = {
    s.name: s for s in (
        Scope('mmdet', 'mmdet', 'mmdet.evaluation:DumpDetResults', _show_dir_mmdet),
        Scope('mmseg', 'mmseg', 'mmengine.evaluator:DumpResults', _show_dir_mmseg),
        Scope('mmpretrain', 'mmpretrain', 'mmengine.evaluator:DumpResults',
              _show_dir_mmpretrain, show_dir_with_tta=False),
    )
}


def scope_of(cfg: Config, config_path: str) -> Scope:
    """The :class:`Scope` named by ``cfg.default_scope`` (a clear error otherwise)."""
    known = ', '.join(sorted(SCOPES))
    name = cfg.get('default_scope')
    if name is None:
        raise UserError(f'{config_path} sets no default_scope; the tools serve configs '
                        f'whose default_scope is one of: {known}')
    if name not in SCOPES:
        raise UserError(f"unknown default_scope '{name}' in {config_path}; known scopes: "
                        f'{known}')
    return SCOPES[name]
