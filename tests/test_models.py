import pytest
import torch
from fedprune.models import build_model, prunable_names


@pytest.mark.parametrize("name,shape,params", [
    ("fl-cnn", (1, 28, 28), 1_663_370),
    ("fl-cnn-bn", (1, 28, 28), 1_663_370 + 2 * (32 + 64)),
    ("digits-cnn", (1, 8, 8), None),
    ("resnet18", (3, 32, 32), 11_173_962),
    ("vgg11-bn", (3, 32, 32), 9_231_114),
])
def test_shapes_and_parameter_counts(name, shape, params):
    model = build_model(name, shape, 10, seed=0)
    out = model(torch.zeros(2, *shape))
    assert out.shape == (2, 10)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_prunable_tensors_are_conv_and_linear_weights_only():
    model = build_model("fl-cnn-bn", (1, 28, 28), seed=0)
    names = prunable_names(model)
    assert names == ["features.0.weight", "features.4.weight", "classifier.1.weight", "classifier.3.weight"]
    params = dict(model.named_parameters())
    assert all(params[n].dim() in (2, 4) for n in names)
    assert not any("bias" in n for n in names)


def test_seed_fixes_initial_weights():
    a = build_model("fl-cnn", (1, 28, 28), seed=7).state_dict()
    b = build_model("fl-cnn", (1, 28, 28), seed=7).state_dict()
    c = build_model("fl-cnn", (1, 28, 28), seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet", (1, 28, 28))
