"""jaxlm.runtime.xla: which models get oneDNN matrix products on CPU, and their results."""

from __future__ import annotations

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import losses, optim, runtime, sharding, state
from jaxlm.config import load_config
from jaxlm.models import RecurrentLM, Transformer
from jaxlm.runtime import xla
from jaxlm.train.evaluate import Evaluator
from jaxlm.train.steps import jit_train_step

needs_onednn = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not runtime.onednn_available(),
    reason="XLA here does not hand CPU matrix products to oneDNN",
)


def test_only_models_that_ask_get_options(monkeypatch):
    assert runtime.compiler_options(object()) is None
    assert runtime.compiler_options(RecurrentLM(vocab_size=65, cell="lstm")) is None
    transformer = Transformer(vocab_size=65)
    expected = xla.ONEDNN_MATMULS if runtime.onednn_available() else None
    assert runtime.compiler_options(transformer) == expected
    monkeypatch.setenv(xla.ENV, "0")
    assert runtime.compiler_options(transformer) is None


@needs_onednn
def test_transformer_gradients_equal_xla_defaults():
    model = Transformer(vocab_size=65, embed_dim=64, num_layers=2, num_heads=2, max_len=32)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 65, (4, 33)))
    params = model.init(jax.random.key(0), tokens[:, :-1], None)["params"]

    def loss_fn(p):
        logits, _, _ = model.apply({"params": p}, tokens[:, :-1], None)
        total, count = losses.cross_entropy(logits, tokens[:, 1:])
        return total / count

    grad = jax.value_and_grad(loss_fn)
    options = runtime.compiler_options(model)
    onednn = jax.jit(grad, compiler_options=options)
    hlo = onednn.lower(params).compile().as_text()
    # The attention's batched products ([B, N, Q, S] scores) are among those oneDNN runs.
    assert re.search(r"%onednn_fusion[.\d]* = f32\[4,2,\d+,\d+\]", hlo), "no batched oneDNN product"
    loss_a, grads_a = jax.jit(grad)(params)
    loss_b, grads_b = onednn(params)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.abs(a).max()))


@needs_onednn
@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_trainer_steps_compile_with_the_models_options(name):
    config = load_config(f"{name}:smoke")
    setup = state.build(config, vocab_size=65)
    mesh = sharding.make_mesh(1, 1)
    shardings = sharding.state_shardings(setup.abstract, mesh)
    tokens = jax.ShapeDtypeStruct((8, 32), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens, "reset": jax.ShapeDtypeStruct((), bool)}
    train_step = jit_train_step(setup, optim.learning_rate(config), shardings, mesh, config.train)
    target = sharding.abstract_on(setup.abstract, shardings)
    with jax.set_mesh(mesh):
        train_hlo = train_step.lower(target, batch).compile().as_text()
    evaluator = Evaluator(setup.model, mesh, batch_size=8, seq_len=32)
    sums = (jax.ShapeDtypeStruct((), jnp.float32),) * 2
    batch = {"inputs": tokens, "targets": tokens, "mask": jax.ShapeDtypeStruct((8, 32), bool)}
    carry = jax.eval_shape(lambda: setup.model.initial_carry(8))
    eval_hlo = evaluator.step.lower(target.params, carry, sums, batch).compile().as_text()
    wanted = runtime.compiler_options(setup.model) is not None
    assert wanted == (name == "transformer")
    assert ("onednn_fusion" in train_hlo) == wanted and ("onednn_fusion" in eval_hlo) == wanted


CHAINED = """
import jax, jax.numpy as jnp, numpy as np
from jaxlm.runtime import xla
x = jnp.asarray(np.random.default_rng(0).standard_normal((20, 200)), jnp.float32)
w = jnp.asarray(np.random.default_rng(1).standard_normal((200, 800)), jnp.float32)
f = lambda x, w: x.T @ (x @ w)
got = jax.jit(f, compiler_options=xla.ONEDNN_MATMULS)(x, w)
np.testing.assert_allclose(got, jax.jit(f)(x, w), rtol=1e-4, atol=1e-2)
print("ok")
"""


@needs_onednn
def test_chained_products_run():
    # A product feeding another aborts the process when both are one oneDNN partition
    # (LIBRARY_FUSION_TYPE_DOT, jaxlib 0.10.2); the options keep each product its own call.
    proc = subprocess.run([sys.executable, "-c", CHAINED], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
