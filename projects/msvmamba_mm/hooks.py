"""mmengine hooks used by the project's configs."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class SaveInitCheckpointHook(Hook):
    """Save the initialised, untrained weights as ``<work_dir>/iter_0.pth`` before the
    first training iteration (after ``init_weights`` and any ``load_from``), so that the
    model can be evaluated before and after training with the same tools.

    Args:
        filename (str): Checkpoint name inside the work dir. Defaults to 'iter_0.pth'.
    """

    priority = 'VERY_LOW'

    def __init__(self, filename: str = 'iter_0.pth'):
        self.filename = filename

    def before_train(self, runner) -> None:
        if runner.iter != 0:  # resumed: the initial weights are gone
            return
        runner.save_checkpoint(runner.work_dir, self.filename, save_optimizer=False,
                               save_param_scheduler=False)
