# What the tiny test configs (./*_tiny-*.py) share, read from each as _base_.tiny_*: data
# loaded in the main process, a learning rate that changes every iteration (so a resumed
# scheduler is visible), a log line and a checkpoint every iteration, a fixed seed.
# The names differ from the stock ones because two bases may not define the same key.
tiny_loader = dict(num_workers=0, persistent_workers=False)
tiny_param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10)
]
tiny_default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(by_epoch=False, interval=1))
tiny_randomness = dict(seed=0)
