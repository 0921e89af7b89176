"""Weights in and out of other libraries' formats (``jaxlm.interop.gpt2``: Hugging Face GPT-2).

Conversions read and write safetensors and JSON only, so nothing is ever unpickled; they need
the ``safetensors`` package (``pip install 'jaxlm[interop]'``, which also brings
``transformers`` and ``torch`` for the parity tests).
"""
