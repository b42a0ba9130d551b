import numpy as np
import pytest

from CGCLesionSegLib.config import xyz_to_zyx, zyx_to_xyz
from CGCLesionSegLib.inputs import order_inputs, parse_input_specs
from CGCLesionSegLib.metrics import confusion, dice, sensitivity
from CGCLesionSegLib.preprocess import default_brain_mask, normalize_channels, validate_channels


def test_size_conversion_round_trip():
    assert xyz_to_zyx((192, 160, 64)) == (64, 160, 192)
    assert zyx_to_xyz(xyz_to_zyx((6, 5, 4))) == (6, 5, 4)
    with pytest.raises(ValueError):
        xyz_to_zyx((1, 2))


def test_input_specs_and_ordering():
    specs = parse_input_specs(["T1=a.nii", "flair=b.nii"])
    assert specs == [("t1", "a.nii"), ("flair", "b.nii")]
    assert order_inputs(specs, ["flair", "t1"]) == ["b.nii", "a.nii"]
    assert parse_input_specs(["/data/x=1/img.nii"]) == [(None, "/data/x=1/img.nii")]
    with pytest.raises(ValueError, match="expected: flair=PATH t2=PATH"):
        order_inputs(specs, ["flair", "t2"])
    with pytest.raises(ValueError, match="in this order: flair, t1"):
        order_inputs([(None, "a")], ["flair", "t1"])
    with pytest.raises(ValueError, match="twice"):
        parse_input_specs(["flair=a", "flair=b"])


def test_metrics_against_counting_loop():
    rng = np.random.default_rng(0)
    p, r = rng.random((6, 7, 8)) > 0.6, rng.random((6, 7, 8)) > 0.5
    tp = fp = fn = 0
    for a, b in zip(p.ravel(), r.ravel()):
        tp += a and b
        fp += a and not b
        fn += b and not a
    assert confusion(p, r) == (tp, fp, fn)
    assert dice(p, r) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert sensitivity(p, r) == pytest.approx(tp / (tp + fn))
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_normalisation_is_zscore_inside_mask_and_zero_outside():
    rng = np.random.default_rng(0)
    ch = [rng.normal(100, 20, (8, 9, 10)).astype(np.float32), rng.normal(5, 1, (8, 9, 10)).astype(np.float32)]
    mask = np.zeros((8, 9, 10), bool)
    mask[1:7, 1:8, 2:9] = True
    out = normalize_channels(ch, mask)
    assert out.shape == (2, 8, 9, 10) and out.dtype == np.float32
    assert np.all(out[:, ~mask] == 0)
    for c in range(2):
        v = out[c][mask]
        assert abs(v.mean()) < 1e-4 and abs(v.std() - 1) < 1e-3
    with pytest.raises(ValueError, match="empty"):
        normalize_channels(ch, np.zeros_like(mask))
    with pytest.raises(ValueError, match="constant"):
        normalize_channels([np.ones((8, 9, 10), np.float32)], mask)


def test_validation_and_default_mask():
    a = np.zeros((4, 4, 4), np.float32)
    a[1, 1, 1] = 3
    assert default_brain_mask([a, np.zeros_like(a)]).sum() == 1
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN") as err:
        validate_channels([a, b], ["flair", "t1"])
    assert "mask" not in str(err.value)  # a mask does not help: the advice must not send users there
    with pytest.raises(ValueError, match="shape"):
        validate_channels([a, np.zeros((4, 4, 5))])


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")])
def test_cli_turns_out_of_memory_into_one_error_line(monkeypatch, capsys, exc):
    from CGCLesionSegLib import cli
    from CGCLesionSegLib.commands import evaluate

    def boom(args):
        raise exc
    monkeypatch.setattr(evaluate, "run", boom)
    assert cli.main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size 1" in err and "Traceback" not in err
