"""Mixed-precision dtype policies."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

_DTYPES = {
    "float32": jnp.float32,
    "f32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "f16": jnp.float16,
}


def _dtype(name: str, field: str):
    try:
        return _DTYPES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"precision: unknown dtype {name!r} for {field!r}; expected one of "
            f"{sorted(set(_DTYPES))}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype parameters are stored in, matrix work runs in, and outputs come out in.

    Example:
      >>> Policy.from_string("params=float32,compute=bfloat16,output=float32").compute_dtype
      <class 'jax.numpy.bfloat16'>
    """

    param_dtype: type = jnp.float32
    compute_dtype: type = jnp.float32
    output_dtype: type = jnp.float32

    @classmethod
    def from_string(cls, spec: str) -> Policy:
        """Parses ``"bfloat16"`` (compute dtype only) or ``"params=..,compute=..,output=.."``.

        Args:
          spec: the policy string.

        Returns:
          The policy; unnamed parts default to float32.
        """
        spec = (spec or "float32").strip()
        if "=" not in spec:
            return cls(compute_dtype=_dtype(spec, "compute"))
        fields = {"params": "param_dtype", "compute": "compute_dtype", "output": "output_dtype"}
        kwargs = {}
        for part in spec.split(","):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in fields:
                raise ValueError(
                    f"precision: unknown field {key!r} in {spec!r}; expected params=, compute=, "
                    "output="
                )
            kwargs[fields[key]] = _dtype(value, key)
        return cls(**kwargs)
