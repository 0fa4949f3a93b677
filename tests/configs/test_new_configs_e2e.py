"""The detection/segmentation configs beyond the paper end to end on the CPU: MSVMambav3
Mask R-CNN and UperNet, Cascade Mask R-CNN and RetinaNet. Each config trains 2 iterations
with the code of tools/train.py, saves a checkpoint per iteration, resumes from the first
one, and the code of tools/test.py evaluates the last one on the tiny datasets.

Each run is the real config through the ``tiny_config`` fixture (tests/conftest.py: tiny
data at small image scales, 3 classes, no pretrained file) and one more override, a
shrunk backbone: one block per stage of the config's own arch, so the stage widths, and
with them the neck, heads and recipe, stay the config's own (RetinaNet tests with score
threshold 0, Cascade samples fewer RoIs, see ``_shrunk_config``). The tools run in-process
(``train_main`` / ``test_main``, which tools/train.py and tools/test.py call) to spare
45 interpreter start-ups; tests/configs/test_msvmamba_e2e.py runs them as subprocesses.
"""
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from projects.msvmamba_mm import cli  # test_main imported by name would be collected

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs'
NEW_CONFIGS = {
    **{f'mask_rcnn_msvmambav3_{v}_{s}.py': 'det' for v in 'tsb' for s in ('1x', '3x')},
    'cascade_mask_rcnn_msvmamba_t_3x.py': 'det',
    **{f'cascade_mask_rcnn_msvmambav3_{v}_3x.py': 'det' for v in 'tsb'},
    **{f'upernet_msvmambav3_{v}_160k_ade20k.py': 'seg' for v in 'tsb'},
    'retinanet_msvmamba_n_1x.py': 'det',
    'retinanet_msvmamba_m_1x.py': 'det',
}
# checkpoints of iterations 1 and 2 (detection: 1 iteration per epoch)
CHECKPOINTS = {'det': ('epoch_1.pth', 'epoch_2.pth'), 'seg': ('iter_1.pth', 'iter_2.pth')}
METRICS = {'det': ('coco/bbox_mAP', 'coco/bbox_mAP_50'), 'seg': ('mIoU', 'aAcc')}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory, tiny):
    """A folder with ``data/tiny_coco`` and ``data/tiny_ade20k`` (2 train, 2 val images)."""
    root = tmp_path_factory.mktemp('new_configs_e2e')
    tiny.make_coco(str(root / 'data' / 'tiny_coco'), splits=dict(train=2, val=2))
    tiny.make_ade20k(str(root / 'data' / 'tiny_ade20k'), splits=dict(train=2, val=2))
    return root


def test_every_new_config_is_run():
    on_disk = {p.name for p in CONFIG_DIR.glob('*.py')}
    assert set(NEW_CONFIGS) <= on_disk
    assert len(NEW_CONFIGS) == 15


def _shrunk_config(folder: Path, name: str, tiny_config) -> Path:
    real = CONFIG_DIR / name
    tiny = tiny_config(folder, NEW_CONFIGS[name], real=str(real))
    model = Config.fromfile(str(real)).to_dict()['model']
    overrides = dict(backbone=dict(arch=dict(_delete_=True, base=model['backbone']['arch'],
                                             depths=(1, 1, 1, 1))))
    if model['type'] == 'RetinaNet':
        # an untrained focal-loss head scores about its prior, 0.01: below the 0.05
        # threshold nothing is detected and CocoMetric has nothing to evaluate
        overrides['test_cfg'] = dict(score_thr=0.0)
    if model['type'] == 'CascadeRCNN':
        # its 4-conv box heads cost 0.13 GFLOPs per RoI and stage: 64 sampled RoIs per
        # image (not 512) in training and 100 proposals (not 1000) in testing keep a CPU
        # step at seconds; the heads themselves are unchanged
        rcnn = [dict(r, sampler=dict(r['sampler'], num=64)) for r in model['train_cfg']['rcnn']]
        overrides['train_cfg'] = dict(rcnn=rcnn)
        overrides['test_cfg'] = dict(rpn=dict(nms_pre=200, max_per_img=100))
    path = folder / f'shrunk_{name}'
    path.write_text(f'_base_ = {str(tiny)!r}\nmodel = {overrides!r}\n')
    return path


def _test_metrics(work_dir: Path) -> dict:
    """The metrics tools/test.py logged (mmengine's LoggerHook writes them to
    ``<work_dir>/<timestamp>/<timestamp>.json``)."""
    logs = sorted(work_dir.glob('*/*.json'))
    assert logs, f'no metrics json under {work_dir}'
    return json.loads(logs[-1].read_text())


@pytest.fixture(autouse=True)
def _free_disk(tmp_path):
    """Each run writes 1-3 GB of checkpoints (full-size heads + AdamW state): remove them
    after the test, so that the 15 runs do not fill a CI machine's disk. Only the files: a
    folder removed could be handed out again as the next test's tmp_path while mmengine's
    visualizer of a run started in the same second still writes there."""
    yield
    for checkpoint in tmp_path.rglob('*.pth'):
        checkpoint.unlink()


@pytest.mark.parametrize('name', sorted(NEW_CONFIGS))
def test_trains_saves_resumes_and_tests(name, tmp_path, data_root, tiny_config,
                                        monkeypatch):
    kind = NEW_CONFIGS[name]
    first, last = CHECKPOINTS[kind]
    cfg = _shrunk_config(tmp_path, name, tiny_config)
    monkeypatch.chdir(data_root)  # the tiny configs' data roots are relative

    train_dir = tmp_path / 'train'
    assert cli.train_main([str(cfg), '--work-dir', str(train_dir)]) == 0
    reference = torch.load(train_dir / last)
    assert reference['meta']['iter'] == 2
    assert (train_dir / first).is_file()

    resume_dir = tmp_path / 'resume'
    assert cli.train_main([str(cfg), '--work-dir', str(resume_dir),
                           '--resume', str(train_dir / first)]) == 0
    assert not (resume_dir / first).exists()  # only iteration 2 was trained
    resumed = torch.load(resume_dir / last)
    assert resumed['meta']['iter'] == 2
    assert list(resumed['state_dict']) == list(reference['state_dict'])
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {2.0}  # AdamW state carried over from iteration 1

    test_dir = tmp_path / 'test'
    assert cli.test_main([str(cfg), str(train_dir / last), '--work-dir', str(test_dir)]) == 0
    metrics = _test_metrics(test_dir)
    for key in METRICS[kind]:
        assert key in metrics, metrics
        value = metrics[key]
        assert value == -1 or 0 <= value <= (1 if kind == 'det' else 100), (key, value)
    if 'mask_rcnn' in name:  # Mask R-CNN and Cascade Mask R-CNN: masks evaluated too
        assert 'coco/segm_mAP' in metrics
