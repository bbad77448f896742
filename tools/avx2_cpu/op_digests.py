"""Prints a digest of each of a set of JAX and TensorFlow ops' outputs on fixed inputs.

Compares code paths bit for bit: run it natively, through tools/avx2_cpu/run.sh, and under
an emulated CPU, then diff the outputs (commands in tools/README.md). The ops are those a
small ViT's training step and input pipeline use.
"""

from __future__ import annotations

import hashlib

import numpy as np


def digest(array) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()[:12]


def jax_outputs(x, w, positive):
    import jax
    import jax.numpy as jnp

    def layer_norm(a):
        centred = a - a.mean(-1, keepdims=True)
        return centred * jax.lax.rsqrt(a.var(-1, keepdims=True) + 1e-6)

    def attention(a):
        q = a.reshape(128, 17, 4, 16)
        return jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, q) / 4.0, -1)

    unary = {
        "rsqrt": (jax.lax.rsqrt, positive),
        "sqrt": (jnp.sqrt, positive),
        "log": (jnp.log, positive),
        "pow": (lambda a: a**1.7, positive),
        "erf": (jax.scipy.special.erf, x),
        "gelu": (lambda a: jax.nn.gelu(a, approximate=False), x),
        "gelu_tanh": (jax.nn.gelu, x),
        "exp": (jnp.exp, x),
        "tanh": (jnp.tanh, x),
        "cos": (jnp.cos, x),
        "softmax": (lambda a: jax.nn.softmax(a, -1), x),
        "logsumexp": (lambda a: jax.nn.logsumexp(a, -1), x),
        "layer_norm": (layer_norm, x),
        "sum": (jnp.sum, x),
        "argmax": (lambda a: jnp.argmax(a, -1), x),
        "attention": (attention, x),
    }
    outputs = {name: jax.jit(f)(a) for name, (f, a) in unary.items()}
    outputs["divide"] = jax.jit(lambda a, b: a / b)(x, positive)
    outputs["matmul"] = jax.jit(jnp.dot)(x, w)
    outputs["matmul_long_contraction"] = jax.jit(lambda a, b: a.T @ b)(x, x @ w)
    outputs["random_normal"] = jax.random.normal(jax.random.key(0), (1000,))
    outputs["random_uniform"] = jax.random.uniform(jax.random.key(1), (1000,))
    return outputs


def tf_outputs(x, w, images):
    import tensorflow as tf

    return {
        "tf_resize": tf.image.resize(images, (16, 16)).numpy(),
        "tf_matmul": tf.matmul(x, w).numpy(),
        "tf_exp": tf.exp(x).numpy(),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2176, 64)).astype(np.float32)  # 128 images x 17 tokens, width 64
    w = (rng.standard_normal((64, 192)) * 0.1).astype(np.float32)
    images = rng.random((8, 8, 8, 1)).astype(np.float32)
    outputs = {**jax_outputs(x, w, np.abs(x) + 0.1), **tf_outputs(x, w, images)}
    for name, value in outputs.items():
        print(f"{name} {digest(value)}")


if __name__ == "__main__":
    main()
