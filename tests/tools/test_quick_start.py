"""The README's quick start, exactly as documented in README.md but with a
smaller budget (--iters): `python tools/quick_start.py` run from a fresh folder makes the
tiny dataset, trains the paper's Mask R-CNN + MSVMamba-Nano, tests the untrained and the
trained checkpoint, draws predictions and plots curves; the model must really learn."""
import json
import re
import os
import os.path as osp
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ITERS = int(os.environ.get('QUICK_START_TEST_ITERS', '40'))


@pytest.mark.parametrize('amp', [False, True], ids=['float32', 'amp'])
def test_quick_start_learns_and_writes_everything(tmp_path, amp):
    """With ``amp`` the training runs under ``--amp`` (bf16 autocast on a CPU, issue 22):
    the same budget must learn as clearly as in float32."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.setdefault('OMP_NUM_THREADS', '1')  # 2 busy cores: one thread per process
    t0 = time.time()
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'quick_start.py'),
                           '--iters', str(ITERS)] + ['--amp'] * amp, cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:]
    print(f'quick start with --iters {ITERS}: {time.time() - t0:.0f} s')

    # (a) the tiny dataset, made in the default place
    data = tmp_path / 'data' / 'quick_start' / 'tiny_coco'
    assert (data / 'annotations' / 'instances_train2017.json').is_file()
    # (b) training with mmengine's progress / ETA lines
    assert f'Iter(train) [{ITERS}/{ITERS}]' in out and 'eta: ' in out
    work = tmp_path / 'work_dirs' / 'quick_start'
    summary = json.loads((work / 'quick_start_summary.json').read_text())
    assert summary['amp'] is amp
    if amp:  # the CPU's bf16 wrapper trained (cpu_amp.CPUBf16OptimWrapper)
        assert 'CPUBf16OptimWrapper' in out or 'bf16 autocast' in out, out[-3000:]
    assert summary['checkpoint'] == str(work / f'iter_{ITERS}.pth')
    assert osp.isfile(summary['checkpoint']) and osp.isfile(summary['untrained_checkpoint'])
    # (c) COCO evaluation tables of mmdet's CocoMetric, for both checkpoints
    assert out.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') >= 4
    # real learning: the trained model beats the same model before training
    before, after = summary['untrained'], summary['trained']
    print(f'untrained {before} -> trained {after}')
    assert before['bbox_mAP'] <= 0.003 and before['bbox_mAP_50'] <= 0.02, before
    assert after['bbox_mAP'] >= 0.005 and after['bbox_mAP_50'] >= 0.03, after
    assert after['bbox_mAP'] >= 5 * max(before['bbox_mAP'], 0.001), (before, after)
    # (d) ground truth | prediction drawings, one PNG per val image
    pngs = os.listdir(summary['predictions'])
    assert len(pngs) == 12 and all(p.endswith('.png') for p in pngs)
    # (e) curves
    assert osp.getsize(summary['curves']) > 10000
    # (f) where everything went
    for key in ('checkpoint', 'curves', 'predictions', 'train_log'):
        assert summary[key] in out


def test_documented_command_is_the_one_tested():
    """The README's quick start shows the command the test above
    runs, without the budget option."""
    text = open(osp.join(REPO, 'README.md')).read()
    text = text[text.index('## Quick start'):]
    text = text[:text.index('\n## ', 1)]
    command = re.findall(r'```bash\n(.*?)```', text, re.S)[0].strip()
    assert command == '.venv/bin/python tools/quick_start.py'
    assert f'--iters {ITERS}' in text  # the CI budget, as documented
