"""Golden test: scenic-vivit loading a Hugging Face ViViT gives the same logits as
transformers' own `VivitForVideoClassification` (eval mode), relative tolerance 1e-4."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from scenic_vivit import hf_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.VivitConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        tubelet_size=[2, 8, 8],
        num_frames=4,
        num_labels=5,
        **overrides,
    )
    model = transformers.VivitForVideoClassification(config).eval()
    with torch.no_grad():  # HF zero-initialises cls/posemb: make every tensor matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model, video):
    pixel_values = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3)))
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits.numpy()


@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_logits_match_transformers(tmp_path, file_format):
    hf_model = tiny_hf_model()
    if file_format == "safetensors":
        hf_model.save_pretrained(tmp_path)
    else:  # the older PyTorch pickle format
        hf_model.config.save_pretrained(tmp_path)
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    model, params, video_shape = hf_weights.load_hf_vivit(tmp_path)
    assert video_shape == (1, 4, 32, 32, 3)
    rng = np.random.default_rng(0)
    video = rng.normal(size=(3, 4, 32, 32, 3)).astype(np.float32)
    video[2] = 5.0 * video[2] + 3.0  # far from the unit-scale statistics of the others
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(video)))
    reference = hf_logits(hf_model, video)
    assert ours.shape == reference.shape == (3, 5)
    assert np.std(reference) > 0.1  # a non-trivial comparison
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_rejects_what_it_cannot_reproduce(tmp_path):
    hf_model = tiny_hf_model(hidden_act="gelu")  # exact erf GELU: not the tanh GELU we use
    hf_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_act"):
        hf_weights.load_hf_vivit(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_act"] = "gelu_fast"
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = hf_weights.read_state_dict(tmp_path)
    state["vivit.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    model = hf_weights.vivit_from_hf_config(config)
    with pytest.raises(ValueError, match="pooler"):
        hf_weights.convert_state_dict(state, model)
    del state["vivit.pooler.dense.weight"], state["vivit.layernorm.weight"]
    with pytest.raises(KeyError, match="vivit.layernorm.weight"):
        hf_weights.convert_state_dict(state, model)
