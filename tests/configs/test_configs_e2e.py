"""Every experiment config under configs/ end to end on the CPU: build and train one step
with the code of tools/train.py (a checkpoint), and the code of tools/test.py evaluates it
on the tiny datasets; one config of each recipe (model type x schedule) first resumes from
that checkpoint for a second step (``e2e`` helper, tests/conftest.py). The tools run
in-process (``cli.train_main`` / ``cli.test_main``, which tools/train.py and tools/test.py
call): no interpreter start-up per run. The scripts themselves, the launchers (2
processes) and the packages' own tools run in tests/tools.

Each run is the real config through the ``tiny_config`` fixture (tiny data at small image
scales, 3 classes, no pretrained file, one step per epoch) and one more override, a shrunk
backbone: one block per stage of the config's own arch, so the stage widths, and with them
the neck, heads and recipe, stay the config's own. RetinaNet tests with score threshold
0; Cascade R-CNN samples fewer RoIs and proposals (``_shrunk_config``).

``E2E`` names every config (both ways: a config without an entry fails
``test_every_config_has_an_entry``, and so does an entry without a file).
"""
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs'


def _entries(kind, names, **extra):
    return {name: dict(kind=kind, **extra) for name in names}


# config (relative to configs/) -> kind; 'resume': how the second step resumes (the one
# config of each recipe: model type x schedule; the others train one step and test it);
# 'shrink': what image scales are divided by, when the config's own are small already;
# 'test': tools/test.py options to run (and check)
E2E = {
    # EMAHook, cosine schedule; --resume with no path: the work dir's latest checkpoint
    **_entries('cls', ['msvmamba_n_in1k.py'], resume='auto', test=('--out', '--show-dir')),
    **_entries('cls', [f'msvmamba_{v}_in1k.py' for v in 'mt']),
    **_entries('cls', [f'msvmambav3_{v}_in1k.py' for v in 'tsb']),
    **_entries('det', ['mask_rcnn_msvmamba_n_1x.py', 'mask_rcnn_msvmamba_m_3x.py',
                       'cascade_mask_rcnn_msvmamba_t_3x.py', 'retinanet_msvmamba_n_1x.py'],
               resume='path'),
    **_entries('det', [f'mask_rcnn_msvmamba_{v}_1x.py' for v in 'mt']),
    **_entries('det', ['mask_rcnn_msvmamba_t_3x.py']),
    **_entries('det', [f'mask_rcnn_msvmambav3_{v}_{s}.py' for v in 'tsb' for s in ('1x', '3x')]),
    **_entries('det', [f'cascade_mask_rcnn_msvmambav3_{v}_3x.py' for v in 'tsb']),
    **_entries('det', ['retinanet_msvmamba_m_1x.py']),
    # test-time augmentation: the config's tta_model and tta_pipeline (mmseg's)
    **_entries('seg', ['upernet_msvmamba_n_160k_ade20k.py'], resume='path',
               test=('--tta', '--out', '--show-dir')),
    **_entries('seg', [f'upernet_msvmamba_{v}_160k_ade20k.py' for v in 'mt']),
    **_entries('seg', [f'upernet_msvmambav3_{v}_160k_ade20k.py' for v in 'tsb']),
    # mmseg's Cityscapes dataset config and its own 80k schedule, on the tiny ADE20K images
    # in the Cityscapes layout
    **_entries('seg', ['examples/upernet_msvmamba_m_80k_cityscapes-512x1024.py'],
               resume='path'),
    # already at the 128 px of the tiny images (its iteration-based schedule resumes
    # through mim: tests/tools/test_ecosystem_tools.py)
    **_entries('det', ['quick_start/mask_rcnn_msvmamba_n_tiny_coco.py'], shrink=1),
}


def experiment_configs():
    """Every config file under configs/ but the ``_base_`` fragments."""
    return {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob('*.py')
            if '_base_' not in p.relative_to(CONFIG_DIR).parts}


def test_every_config_has_an_entry():
    on_disk = experiment_configs()
    assert not on_disk - set(E2E), f'configs without an E2E entry: {on_disk - set(E2E)}'
    assert not set(E2E) - on_disk, f'E2E entries without a file: {set(E2E) - on_disk}'


def _shrunk_config(folder: Path, name: str, tiny_config) -> Path:
    entry = E2E[name]
    real = CONFIG_DIR / name
    tiny = tiny_config(folder, entry['kind'], real=real, shrink=entry.get('shrink'))
    model = Config.fromfile(str(tiny)).to_dict()['model']
    overrides = dict(backbone=dict(arch=dict(_delete_=True, base=model['backbone']['arch'],
                                             depths=(1, 1, 1, 1))))
    if model['type'] == 'RetinaNet':
        # an untrained focal-loss head scores about its prior, 0.01: below the 0.05
        # threshold nothing is detected and CocoMetric has nothing to evaluate
        overrides['test_cfg'] = dict(score_thr=0.0)
    if model['type'] == 'CascadeRCNN':
        # its 4-conv box heads cost 0.13 GFLOPs per RoI and stage: 32 sampled RoIs per
        # image (not 512) in training and 20 proposals (not 1000) in testing keep a CPU
        # step at seconds; the heads themselves are unchanged
        rcnn = [dict(r, sampler=dict(r['sampler'], num=32)) for r in model['train_cfg']['rcnn']]
        overrides['train_cfg'] = dict(rcnn=rcnn)
        overrides['test_cfg'] = dict(rpn=dict(nms_pre=100, max_per_img=20))
    path = folder / f'shrunk_{real.name}'
    path.write_text(f'_base_ = {str(tiny)!r}\nmodel = {overrides!r}\n')
    return path


@pytest.fixture
def _free_disk(tmp_path):
    """A run of the larger configs writes 1-2 GB of checkpoints (full-size heads + AdamW
    state): remove them after the test, so that the runs do not fill a CI machine's disk."""
    yield
    for checkpoint in tmp_path.rglob('*.pth'):
        checkpoint.unlink()


VAL_IMAGES = {'det': 2, 'seg': 2, 'cls': 3}  # in e2e_root (tests/conftest.py)


@pytest.mark.parametrize('name', sorted(E2E))
def test_config_trains_and_tests(name, tmp_path, e2e_root, tiny_config, e2e,
                                               in_process_tools, dump_and_drawings,
                                               monkeypatch, _free_disk):
    kind, options = E2E[name]['kind'], E2E[name].get('test', ())
    config = _shrunk_config(tmp_path, name, tiny_config)
    out, show = tmp_path / 'results.pkl', tmp_path / 'show'
    paths = {'--out': out, '--show-dir': show}
    test_args = [a for o in options for a in ([o, paths[o]] if o in paths else [o])]
    monkeypatch.chdir(e2e_root)  # the tiny configs' data roots are relative
    run = e2e(in_process_tools, config, tmp_path, kind, resume=E2E[name].get('resume'),
              test_args=test_args)
    if kind == 'det' and 'retinanet' not in name:  # (Cascade) Mask R-CNN: masks evaluated
        assert 'coco/segm_mAP' in run.metrics
    if '--tta' in options:  # the Runner ran the model wrapped in the config's tta_model
        assert "type='SegTTAModel'" in run.test_log()
    if '--out' in options:
        dump_and_drawings(out, show, VAL_IMAGES[kind])
