"""MSVMamba-Tiny exported as a user would, run by ONNX Runtime on real photographs.

The weights are the official Tiny state dict rebuilt from the seeded weight rule
(tests/data/seeded, the same file and names the upstream release uses), saved as an
official checkpoint (``{'model': ...}``) and exported by the command

    python tools/deployment/pytorch2onnx.py configs/msvmamba_t_in1k.py CKPT --out t.onnx --dynamic

The photographs (tests/data/images, see its README) are read with mmcv and normalised from
the file's own metadata, as a deployment would, at their own uneven sizes (512 x 512,
300 x 451, 400 x 600), resized to 224 x 224, and as one batch of three. Each logits
tensor must be within 1e-4 (max |diff| / max |PyTorch|) of ``model(x, mode='tensor')``.
About 1 min on 2 cores (most of it the export). The same file quantized to int8
(``pytorch2onnx.py --quantize int8``) runs on the photographs too."""
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from backbone_utils import assert_checksums, load_seeded, seeded_state_dict  # noqa: E402
from projects.msvmamba_mm import deploy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

CONFIG = str(REPO / 'configs' / 'msvmamba_t_in1k.py')
PHOTOS = sorted((REPO / 'tests' / 'data' / 'images').glob('*.jpg'))
# int8 vs float32 logits, max |diff| / max |float32| (measured: see docs/deployment.md, int8)
INT8_BOUND = 2e-1  # measured 1.2e-1 on the seeded Tiny (2026-12-07)


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
    """(PyTorch model, ONNX Runtime session, ONNX file) of the seeded official Tiny."""
    folder = tmp_path_factory.mktemp('tiny_photos')
    seeded = load_seeded('tiny')
    official = seeded_state_dict(seeded['keys'])
    assert_checksums(official, seeded['key_checksums'])
    ckpt = str(folder / 'msvmamba_tiny_official.pth')
    torch.save({'model': official}, ckpt)  # the layout of the released files
    out = str(folder / 't.onnx')
    # the command above, in-process (its implementation: deploy.export_config)
    deploy.export_config(CONFIG, ckpt, out, dynamic=True, check=False)
    model, _, _ = deploy.load_model(CONFIG, ckpt)
    return model, deploy.ort_session(out, threads=2), out


def test_photos_are_real_and_uneven():
    assert [p.name for p in PHOTOS] == ['astronaut.jpg', 'chelsea.jpg', 'coffee.jpg']


def test_onnxruntime_matches_pytorch_on_photographs(tiny_export):
    model, session, path = tiny_export
    meta = deploy.read_metadata(path)
    assert meta['task'] == 'classification'
    inputs = {p.stem: deploy.normalise(p, meta) for p in PHOTOS}
    assert {tuple(x.shape[2:]) for x in inputs.values()} == {(512, 512), (300, 451),
                                                            (400, 600)}
    inputs['batch of 3 at 224 x 224'] = torch.cat(
        [deploy.normalise(p, meta, (224, 224)) for p in PHOTOS])
    errors = {}
    for name, x in inputs.items():
        # the photographs, not noise: the inputs span the normalised range
        assert x.std() > 0.3 and x.amin() < -1 and x.amax() > 1, name
        errors[name] = max(deploy.relative_errors(model, 'classification', session, x).values())
    print('max |onnxruntime - pytorch| / max |pytorch|:',
          ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
    assert max(errors.values()) <= 1e-4, errors
    # the logits differ from photograph to photograph (a real forward, not a constant)
    with torch.no_grad():
        logits = model(inputs['batch of 3 at 224 x 224'], mode='tensor')
    assert logits.shape == (3, 1000) and (logits[0] - logits[1]).abs().max() > 1e-3


def test_int8_on_photographs(tiny_export, tmp_path):
    """``--quantize int8`` of the same file (deploy.quantize_int8, what the tool runs) on
    the batch of three photographs: logits within INT8_BOUND of float32. Top-1 agreement
    is not asked of the seeded weights: int8's error (1.3e-1 of the largest logit,
    measured 2026-12-07) exceeds the gaps between their top classes, and int8 picked
    another class on 2 of 3 photographs, which float32 had 1.7% and 3.5% of the largest
    logit below its top-1 (docs/deployment.md, int8). A trained model's top-1 is the
    figure to take (benchmark_onnx.py --int8-accuracy)."""
    _, session, path = tiny_export
    int8 = str(tmp_path / 't.int8.onnx')
    deploy.quantize_int8(path, int8)
    meta = deploy.read_metadata(path)
    x = torch.cat([deploy.normalise(p, meta, (224, 224)) for p in PHOTOS]).numpy()
    want, got = (torch.from_numpy(s.run(None, {meta['input_name']: x})[0])
                 for s in (session, deploy.ort_session(int8, threads=2)))
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f'int8 vs float32 on the photographs: top-1 {got.argmax(1).tolist()} vs '
          f'{want.argmax(1).tolist()}, rel err {err:.1e}')
    assert 1e-4 < err <= INT8_BOUND, err
