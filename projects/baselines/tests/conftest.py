"""Fixtures shared by scenic-baselines' tests."""

import numpy as np
import pytest


def contrastive_loss_float64(image, text, scale):
    """float64 reference of CLIP's loss: the mean over both directions (image -> text, text
    -> image) of the cross-entropy of the diagonal, pair i = row i."""
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    logits = scale * image @ text.T

    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


@pytest.fixture
def numpy_contrastive_loss():
    return contrastive_loss_float64
