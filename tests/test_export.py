"""Deployment paths of the eval-mode model: torch.compile, torch.export and ONNX export."""
import importlib.util

import pytest
import timm
import torch
import torch.nn as nn

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.inference.export import export_onnx, export_program
from hbfp_timm.layers import generalized_pool2d
from hbfp_timm.models.backbone import run_modules

IMG_SIZE = (128, 64)


@pytest.fixture(scope='module')
def small_model() -> nn.Module:
    """hbfp_resnet18 in eval mode with random BatchNorm affine parameters and statistics, so that the BFP
    modules (an identity at initialisation: their last BN weight is zero) take part in the output."""
    torch.manual_seed(0)
    model = timm.create_model('hbfp_resnet18')
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                if isinstance(module.bias, nn.Parameter):
                    module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def _images(batch_size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch_size, 3, *IMG_SIZE, generator=torch.Generator().manual_seed(seed))


def test_bfp_contributes_to_the_test_model(small_model):
    # With zero-initialised projections BFP would be an identity and the tests below would not cover it.
    x = _images(2, 0)
    cuts = small_model._cuts
    with torch.no_grad():
        low = run_modules(small_model.backbone, cuts.stem, x)
        mid = run_modules(small_model.backbone, cuts.block3, low)
        low_tilde, mid_tilde = small_model.bfp_low_mid.perceive(low, mid)
    assert low_tilde.abs().amax() > 1e-2 and mid_tilde.abs().amax() > 1e-2


def test_gep_traceable_path_equals_eager_path_forward_and_backward(monkeypatch):
    # Channel 0 constant, channel 1 with ties at the maximum: the guards must agree too.
    x = torch.randn(3, 70, 12, 4)
    x[0, 0] = 2.5
    x[1, 1, 0, :2] = x[1, 1].max() + 1.0
    lambdas = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    grad = torch.randn(3, 70, 5)

    eager_x = x.clone().requires_grad_()
    eager = generalized_pool2d(eager_x, lambdas)
    (eager * grad).sum().backward()

    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    traced_x = x.clone().requires_grad_()
    traced = generalized_pool2d(traced_x, lambdas)
    (traced * grad).sum().backward()

    torch.testing.assert_close(traced, eager)
    torch.testing.assert_close(traced_x.grad, eager_x.grad)


def test_gep_eager_gradient_is_exact_in_float64():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    lambdas = torch.tensor([0.0, 0.4, 1.0])
    assert torch.autograd.gradcheck(lambda t: generalized_pool2d(t, lambdas), (x,))


def test_compiled_model_equals_eager(small_model):
    # aot_eager traces the model with dynamo and AOTAutograd (the graph inductor would compile) without
    # invoking the C++ compiler, which takes about a minute on CPU.
    torch._dynamo.reset()
    compiled = torch.compile(small_model, backend='aot_eager', fullgraph=True)
    x = _images(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small_model(x), rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


def test_exported_program_equals_eager_at_other_batch_sizes(small_model):
    program = export_program(small_model, img_size=IMG_SIZE, batch_size=2, dynamic_batch=True)
    assert not any(node.target == torch.ops.aten.searchsorted.Tensor for node in program.graph.nodes)
    for batch_size in (1, 3):
        x = _images(batch_size, batch_size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), small_model(x), rtol=1e-4, atol=1e-4)


def test_export_onnx_runs_in_onnxruntime_with_the_eager_outputs(small_model, tmp_path):
    import onnx
    import onnxruntime
    path = export_onnx(small_model, tmp_path / 'model.onnx', img_size=IMG_SIZE)
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert [output.name for output in session.get_outputs()] == ['descriptor']  # no classifier: num_classes=0
    for batch_size in (1, 3):  # the batch dimension is dynamic
        x = _images(batch_size, 7)
        (out,) = session.run(None, {'images': x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), small_model(x), rtol=1e-4, atol=1e-4)


def test_the_onnx_output_of_a_model_with_a_classifier_is_named_logits_as_it_holds_the_class_scores(tmp_path):
    """A model with an ID classifier (num_classes > 0, as trained) returns its class scores from forward; its ONNX
    output was named 'descriptor'. Without the classifier the same model's output is its descriptor."""
    import onnxruntime
    torch.manual_seed(0)
    num_classes = 5
    model = timm.create_model('hbfp_resnet18', num_classes=num_classes, correlation_dim=8, perception_dim=16).eval()
    x = _images(2, 8)
    for name, width in (('logits', num_classes), ('descriptor', model.num_features)):
        if name == 'descriptor':
            model.reset_classifier(0)
        path = export_onnx(model, tmp_path / f'{name}.onnx', img_size=IMG_SIZE)
        session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        assert [output.name for output in session.get_outputs()] == [name]
        (out,) = session.run([name], {'images': x.numpy()})
        assert out.shape == (len(x), width)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


def test_export_onnx_without_the_exporter_packages_names_them(small_model, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'onnxscript' else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r'missing: onnxscript.*pip install onnx onnxscript'):
        export_onnx(small_model, tmp_path / 'model.onnx', img_size=IMG_SIZE)
    assert not (tmp_path / 'model.onnx').exists()


def test_a_dynamic_batch_example_of_one_image_and_an_onnx_path_that_cannot_be_written_are_said_before_exporting(
        small_model, tmp_path):
    """batch_size=1 was torch.export's 'Constraints violated (batch)!'; a folder as the path failed with
    IsADirectoryError after the whole export, a path under a file with '[Errno 17] File exists'."""
    for export in (export_program, lambda model, **kwargs: export_onnx(model, tmp_path / 'm.onnx', **kwargs)):
        with pytest.raises(ValueError, match=r'^batch_size: expected an integer >= 2 for the example input of a '
                                             r'dynamic batch .*got 1$'):
            export(small_model, img_size=IMG_SIZE, batch_size=1)
    (tmp_path / 'taken.txt').write_text('a file')
    with pytest.raises(ValueError, match=rf'^path: {tmp_path} is a folder; expected the \.onnx file to write$'):
        export_onnx(small_model, tmp_path, img_size=IMG_SIZE)
    with pytest.raises(ValueError, match=r'^path: .*taken\.txt/m\.onnx cannot be written: .*taken\.txt is a file'):
        export_onnx(small_model, tmp_path / 'taken.txt' / 'm.onnx', img_size=IMG_SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken.txt']
