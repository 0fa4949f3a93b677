"""The smaller tools (analyze_logs, browse_dataset, print_config, infer) and the clear
errors for a newcomer's usual mistakes, in-process where that is enough (fast), with the
stock R-18 test configs on the tiny datasets of the `workspace` fixture."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

from projects.msvmamba_mm import cli
from projects.msvmamba_mm.datasets import check_dataset_paths, check_pretrained
from projects.msvmamba_mm.distributed import cpu_run_message
from projects.msvmamba_mm.errors import UserError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _load_tool(relpath):
    path = osp.join(REPO, 'tools', relpath)
    name = 'tool_' + osp.splitext(relpath)[0].replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pngs(folder):
    found = [osp.join(d, f) for d, _, files in os.walk(folder) for f in files
             if f.endswith(('.png', '.jpg'))]
    for path in found:
        with open(path, 'rb') as f:
            head = f.read(8)
        assert head == PNG_MAGIC or head[:3] == b'\xff\xd8\xff', path
    return sorted(found)


# ----------------------------------------------------------------------------------------
# analyze_logs
# ----------------------------------------------------------------------------------------
@pytest.fixture
def scalar_log(tmp_path):
    """An mmengine vis_data/scalars.json of 4 logged training steps and 2 validations."""
    lines = [dict(lr=1e-3, loss=4.0 - i, loss_cls=1.0 / (i + 1), time=t, data_time=0.01,
                  iter=10 * (i + 1), step=10 * (i + 1))
             for i, t in enumerate((2.0, 1.0, 3.0, 2.0))]
    lines.insert(2, {'coco/bbox_mAP': 0.1, 'coco/segm_mAP': 0.05, 'time': 0.5, 'step': 20})
    lines.append({'coco/bbox_mAP': 0.4, 'coco/segm_mAP': 0.3, 'time': 0.5, 'step': 40})
    path = tmp_path / 'run' / '20260101_000000' / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in lines))
    return path


def test_analyze_logs_plot_curve(scalar_log, tmp_path):
    tool = _load_tool('analysis_tools/analyze_logs.py')
    out = tmp_path / 'curves.png'
    assert tool.main(['plot_curve', str(scalar_log), '--keys', 'loss', 'bbox_mAP',
                      '--out', str(out), '--title', 't']) is None
    assert _pngs(tmp_path) == [str(out)] and out.stat().st_size > 5000
    records = tool.load_log(str(scalar_log))
    assert tool.series(records, 'coco/bbox_mAP')['x'].tolist() == [20, 40]
    assert tool.series(records, 'loss')['y'].tolist() == [4, 3, 2, 1]
    # default output: next to the log; two logs with a legend
    tool.main(['plot_curve', str(scalar_log), str(scalar_log), '--legend', 'a', 'b'])
    assert (scalar_log.parent / 'curves.png').is_file()
    with pytest.raises(SystemExit, match="key 'nope' is not in the log"):
        tool.main(['plot_curve', str(scalar_log), '--keys', 'nope'])
    with pytest.raises(SystemExit, match='log file not found'):
        tool.main(['plot_curve', str(tmp_path / 'missing.json')])


def test_analyze_logs_cal_train_time(scalar_log, capsys):
    tool = _load_tool('analysis_tools/analyze_logs.py')
    tool.main(['cal_train_time', str(scalar_log)])
    stats = tool.train_time_stats(tool.load_log(str(scalar_log)))
    # only the training records count (the validation lines' time is left out)
    assert stats['records'] == 4 and stats['mean'] == pytest.approx(2.0)
    assert (stats['slowest_step'], stats['fastest_step'], stats['last_step']) == (30, 20, 40)
    assert stats['total'] == pytest.approx(80.0)
    out = capsys.readouterr().out
    assert 'slowest step 30: 3.0000 s/iter' in out and 'average: 2.0000 s/iter' in out


# ----------------------------------------------------------------------------------------
# print_config
# ----------------------------------------------------------------------------------------
def test_print_config_merges_bases_and_options(tool_configs, tmp_path, capsys):
    tool = _load_tool('misc/print_config.py')
    saved = tmp_path / 'merged.py'
    assert tool.main([tool_configs['cls'], '--cfg-options', 'train_dataloader.batch_size=7',
                      '--save', str(saved)]) == 0
    out = capsys.readouterr().out
    assert "type='ImageClassifier'" in out  # from the mmpretrain base
    assert Config.fromfile(str(saved)).train_dataloader.batch_size == 7
    assert tool.main(['no/such.py']) == 2
    assert capsys.readouterr().err.strip() == 'error: config file not found: no/such.py'


# ----------------------------------------------------------------------------------------
# browse_dataset
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind,phase', [('det', 'train'), ('seg', 'val'), ('cls', 'train')])
def test_browse_dataset_draws_ground_truth(workspace, tool_configs, monkeypatch, tmp_path,
                                           kind, phase):
    tool = _load_tool('analysis_tools/browse_dataset.py')
    monkeypatch.chdir(workspace)  # the configs' data roots are relative
    out = tmp_path / 'browse'
    assert tool.main([tool_configs[kind], '--output-dir', str(out), '--phase', phase,
                      '--max-num', '2']) == 0
    assert len(_pngs(out)) == 2  # seg val has 2 images, the others more


def test_browse_dataset_missing_data_is_a_clear_error(tool_configs, tmp_path, monkeypatch,
                                                      capsys):
    tool = _load_tool('analysis_tools/browse_dataset.py')
    monkeypatch.chdir(tmp_path)  # no data/ here
    assert tool.main([tool_configs['det'], '--output-dir', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: dataset not found: data/tiny_coco/')
    assert 'make_tiny_datasets.py coco' in err


# ----------------------------------------------------------------------------------------
# infer
# ----------------------------------------------------------------------------------------
def _random_checkpoint(config, path, classes):
    """A checkpoint of the config's randomly initialised model (no training needed),
    with the dataset meta a training run stores (classes; palette for mmseg)."""
    from projects.msvmamba_mm.tooling import load_scoped_config
    from mmengine.registry import MODELS
    cfg, _ = load_scoped_config(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = dict(classes=classes, palette=[[40 * i, 255 - 40 * i, 0] for i in range(len(classes))])
    torch.save(dict(meta=dict(dataset_meta=meta), state_dict=model.state_dict()), path)
    return path


@pytest.mark.parametrize('kind', ['det', 'seg', 'cls'])
def test_infer_writes_drawn_predictions(workspace, tool_configs, tmp_path, capsys, kind):
    classes = {'seg': ('background', 'circle', 'square', 'triangle')}.get(
        kind, ('circle', 'square', 'triangle'))
    ckpt = _random_checkpoint(tool_configs[kind], tmp_path / 'model.pth', classes)
    folder = {'det': 'tiny_coco/val2017', 'seg': 'tiny_ade20k/images/validation',
              'cls': 'tiny_imagenet/val/circle'}[kind]
    images = sorted(os.listdir(workspace / 'data' / folder))
    one = str(workspace / 'data' / folder / images[0])
    out = tmp_path / 'infer'
    tool = _load_tool('infer.py')
    # a single image and a folder (all its images); the detector with --amp (backbone +
    # neck in bf16, boxes and NMS in float32)
    amp = ['--amp'] if kind == 'det' else []
    assert tool.main([tool_configs[kind], str(ckpt), one, str(workspace / 'data' / folder),
                      '--out-dir', str(out), '--device', 'cpu', '--topk', '2', *amp]) == 0
    assert f'{1 + len(images)} image(s) done' in capsys.readouterr().out
    assert len(_pngs(out / 'vis')) == len(images)  # same names: the drawings overwrite
    if kind == 'cls':
        report = json.loads((out / 'predictions.json').read_text())
        assert len(report) == 1 + len(images)
        assert [len(r['topk']) for r in report] == [2] * len(report)
        assert {t['class'] for r in report for t in r['topk']} <= set(classes)


def test_infer_user_errors(tool_configs, tmp_path, capsys):
    tool = _load_tool('infer.py')
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    for args, message in (
            ([tool_configs['det'], 'no/such.pth', 'x.jpg'], 'checkpoint not found: no/such.pth'),
            ([tool_configs['det'], str(ckpt), 'no/img.jpg'], 'input not found: no/img.jpg'),
            ([tool_configs['det'], str(ckpt), str(tmp_path)], 'no images')):
        assert tool.main([*args, '--out-dir', str(tmp_path / 'o')]) == 2
        assert capsys.readouterr().err.startswith('error: ' + message)
    # checkpoints that exist but would load nothing (the inferencers only log that)
    image = str(tmp_path / 'x.png')
    mmcv.imwrite(np.zeros((32, 32, 3), np.uint8), image)
    assert tool.main([tool_configs['cls'], str(ckpt), image, '--backend', 'onnxruntime',
                      '--amp', '--out-dir', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err.startswith('error: --amp applies to the pytorch backend')
    # a detection config with the onnxruntime backend: refused before anything loads
    assert tool.main([tool_configs['det'], str(ckpt), image, '--backend', 'onnxruntime',
                      '--out-dir', str(tmp_path / 'o')]) == 2
    assert 'detection files hold only backbone + neck' in capsys.readouterr().err
    official, other = tmp_path / 'official.pth', tmp_path / 'other.pth'
    torch.save({'model': {'layers.0.blocks.0.norm.weight': torch.ones(4)}}, official)
    torch.save({'state_dict': {'encoder.weight': torch.ones(4)}}, other)
    for path, message in ((official, 'msvmamba2mmpretrain.py'), (other, 'another model')):
        assert tool.main([tool_configs['cls'], str(path), image, '--device', 'cpu',
                          '--out-dir', str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: {path} would load no weight') and message in err, err


# ----------------------------------------------------------------------------------------
# clear errors of tools/train.py and tools/test.py
# ----------------------------------------------------------------------------------------
def _coco_cfg(**dataset):
    dataset = dict(dict(type='CocoDataset', data_root='nowhere/coco/',
                        ann_file='annotations/instances_train2017.json',
                        data_prefix=dict(img='train2017/')), **dataset)
    return Config(dict(train_dataloader=dict(dataset=dataset)))


def test_check_dataset_paths_names_the_missing_path_and_the_tiny_set(tmp_path):
    with pytest.raises(UserError) as e:
        check_dataset_paths(_coco_cfg(), ['train_dataloader'])
    msg = str(e.value)
    assert msg.startswith('dataset not found: nowhere/coco/ '
                          '(train_dataloader.dataset.data_root;')
    assert 'make_tiny_datasets.py coco --out-dir data' in msg
    assert 'train_dataloader.dataset.data_root=PATH/' in msg
    (tmp_path / 'annotations').mkdir()
    with pytest.raises(UserError, match=r'instances_train2017.json \(train_dataloader'
                       r'.dataset.ann_file'):
        check_dataset_paths(_coco_cfg(data_root=str(tmp_path)), ['train_dataloader'])
    (tmp_path / 'annotations' / 'instances_train2017.json').write_text('{}')
    with pytest.raises(UserError, match=r'data_prefix.img'):
        check_dataset_paths(_coco_cfg(data_root=str(tmp_path)), ['train_dataloader'])
    (tmp_path / 'train2017').mkdir()
    check_dataset_paths(_coco_cfg(data_root=str(tmp_path)), ['train_dataloader'])
    # wrappers are looked through; other loaders and remote storage are left alone
    wrapped = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2, dataset=_coco_cfg().train_dataloader.dataset))))
    with pytest.raises(UserError, match='nowhere/coco/'):
        check_dataset_paths(wrapped, ['train_dataloader'])
    check_dataset_paths(_coco_cfg(), ['val_dataloader'])
    check_dataset_paths(_coco_cfg(backend_args=dict(backend='petrel')), ['train_dataloader'])


def test_check_pretrained_names_the_fixes():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py'))
    with pytest.raises(UserError) as e:
        check_pretrained(cfg)
    msg = str(e.value)
    assert msg.startswith('backbone checkpoint not found: checkpoints/msvmamba_nano_in1k.pth')
    assert 'model.backbone.init_cfg.checkpoint=PATH' in msg
    assert 'model.backbone.init_cfg=None' in msg
    cfg.model.backbone.init_cfg = None
    check_pretrained(cfg)


def test_train_and_test_check_the_files_first(tmp_path, capsys, monkeypatch):
    """The paper config in a checkout without data: one line naming the dataset path;
    with the dataset check passed, the missing ImageNet checkpoint."""
    monkeypatch.chdir(tmp_path)
    config = osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py')
    assert cli.train_main([config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: dataset not found: data/coco/ ')
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    assert cli.test_main([config, str(ckpt)]) == 2
    assert capsys.readouterr().err.startswith('error: dataset not found: data/coco/ ')
    for sub in ('annotations/instances_train2017.json', 'annotations/instances_val2017.json'):
        (tmp_path / 'data' / 'coco' / sub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / 'data' / 'coco' / sub).write_text('{}')
    for sub in ('train2017', 'val2017'):
        (tmp_path / 'data' / 'coco' / sub).mkdir()
    assert cli.train_main([config]) == 2
    assert capsys.readouterr().err.startswith(
        'error: backbone checkpoint not found: checkpoints/msvmamba_nano_in1k.pth')
    assert cli.train_main([config, '--cfg-options', 'load_from=nowhere.pth',
                           'model.backbone.init_cfg=None']) == 2
    assert 'checkpoint not found: nowhere.pth (load_from' in capsys.readouterr().err
    # an option mmengine cannot merge: one line too, not a traceback
    quick = osp.join(REPO, 'configs', 'quick_start', 'mask_rcnn_msvmamba_n_tiny_coco.py')
    assert cli.train_main([quick, '--cfg-options', 'model.backbone.init_cfg.type=x']) == 2
    assert capsys.readouterr().err.startswith('error: --cfg-options: init_cfg=')


def test_cpu_distributed_message():
    msg = cpu_run_message(2, 2, 2)
    assert 'the 2 processes run on the CPU and synchronise over gloo' in msg
    assert 'WARNING' not in msg
    msg = cpu_run_message(8, 8, 2)
    assert 'WARNING: 8 processes on this machine but only 2 CPU cores' in msg
    assert 'use at most 2' in msg


def test_dist_train_sh_rejects_a_bad_process_count():
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_train.sh'), 'c.py', 'two'],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: GPUS must be a number of processes (1, 2, ...), "
                                   "got 'two'")


def test_tiny_coco_class_colors_and_radius(tiny, tmp_path):
    """The quick start's easier data: one fixed colour per class, larger shapes."""
    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO
    root = tmp_path / 'tiny_coco'
    tiny.make_coco(str(root), splits=dict(train=6), size=(128, 128), radius=(0.15, 0.3),
                   class_colors=True)
    coco = COCO(str(root / 'annotations' / 'instances_train2017.json'))
    assert coco.getAnnIds()
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = np.asarray(Image.open(root / 'train2017' / coco.imgs[ann['image_id']]
                                      ['file_name']))
        mask = coco.annToMask(ann).astype(bool)
        color = np.median(image[mask], axis=0)  # JPEG: close to, not exactly, the colour
        expected = tiny.CLASS_COLORS[ann['category_id'] - 1]
        assert np.abs(color - expected).max() < 20, (color, expected)
        assert max(ann['bbox'][2:]) >= 1.4 * 0.15 * 128  # min radius (a triangle: 1.5 r)
    assert json.loads((root / 'meta.json').read_text())['class_colors'] is True
