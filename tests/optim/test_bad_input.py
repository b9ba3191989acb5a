"""Bad state / gradient trees: clear trace-time errors naming the leaf or state (issue 19, "Bad input")."""

import jax
import jax.numpy as jnp
import pytest

from jaxsciml.optim import shampoo, soap

PARAMS = {"a": jnp.ones((6, 4)), "b": jnp.ones(3)}
MAKERS = {
    "shampoo": lambda: shampoo(0.1),
    "soap": lambda: soap(0.1),
    "shampoo_4bit": lambda: shampoo(0.1, quantize_eigenvectors=True),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_missing_leaf_is_named(name):
    opt = MAKERS[name]()
    state = opt.init(PARAMS)
    with pytest.raises(ValueError, match=r"have 1 leaves but the state was initialised for 2.*\['a'\] \(6, 4\)"):
        jax.jit(opt.update)({"a": jnp.ones((6, 4))}, state, None)


@pytest.mark.parametrize("name", list(MAKERS))
def test_changed_shape_is_named(name):
    opt = MAKERS[name]()
    state = opt.init(PARAMS)
    with pytest.raises(ValueError, match=r"leaf \['a'\] of the updates has shape \(8, 4\).*changed shape"):
        jax.jit(opt.update)({"a": jnp.ones((8, 4)), "b": jnp.ones(3)}, state, None)
    # a changed vector (diagonal leaf) is caught too
    with pytest.raises(ValueError, match=r"leaf \['b'\] of the updates has shape \(5,\)"):
        opt.update({"a": jnp.ones((6, 4)), "b": jnp.ones(5)}, state, None)


def test_wrong_state_class_is_named():
    with pytest.raises(TypeError, match="expected the ShampooState.*got a SoapState"):
        shampoo(0.1).update(PARAMS, soap(0.1).init(PARAMS), PARAMS)
    with pytest.raises(TypeError, match="expected the SoapState.*got a ShampooState"):
        soap(0.1).update(PARAMS, shampoo(0.1).init(PARAMS), PARAMS)


def test_good_input_still_works():
    opt = shampoo(0.1)
    u, _ = jax.jit(opt.update)(PARAMS, opt.init(PARAMS), PARAMS)
    assert jax.tree_util.tree_map(jnp.shape, u) == {"a": (6, 4), "b": (3,)}
