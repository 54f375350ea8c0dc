"""An int8 zoo model (``models.quantize``) under every ``compile_model`` mode: the eager and ``torch.compile`` modes
give the int8 model's logits (the kernel call stays eager: one graph break), TorchScript and ``torch.export``
refuse with the reason and what to do instead (``docs/zoo-and-deployment.md``, "Compiling and exporting")."""

import pytest
import torch

from models import SequenceClassifier, compile_model, quantize


def int8_model() -> torch.nn.Module:
    torch.manual_seed(0)
    float_model = SequenceClassifier(num_classes=3, vocab_size=30, embed_dim=8, hidden_size=8, num_layers=2,
                                     merge_mode=["sum", "concat"])
    return quantize(float_model)


@pytest.mark.parametrize("mode", ["none", "aot_eager"])
def test_eager_and_torch_compile_modes_give_the_int8_logits(mode: str):
    model = int8_model()
    x = torch.randint(1, 30, (3, 7))
    with torch.inference_mode():
        want = model(x)
    compiled = compile_model(model, mode)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), want, rtol=0, atol=0)


@pytest.mark.slow
def test_inductor_gives_the_int8_logits():
    model = int8_model()
    x = torch.randint(1, 30, (3, 7))
    with torch.inference_mode():
        want = model(x)
        torch.testing.assert_close(compile_model(model, "inductor")(x), want, rtol=0, atol=0)


@pytest.mark.parametrize(("mode", "match"), [
    ("script", "cannot be compiled by TorchScript.*Script or export the float model"),
    ("export", "cannot be traced or exported.*Export the float model"),
])
def test_script_and_export_refuse_with_what_to_do_instead(mode: str, match: str):
    with pytest.raises(RuntimeError, match=match):
        compile_model(int8_model(), mode)
