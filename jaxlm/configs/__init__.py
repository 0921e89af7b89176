"""The recipes shipped with jaxlm: ``load_config("lstm:smoke")`` from any folder, or
``--config=configs/lstm.py:smoke`` from the repository (``configs/`` links here).

Each file has ``get_config(arg=None)``, whose ``arg`` selects a named variant (every file has
``smoke``): ``lstm`` (the default run), ``gru``, ``rnn``, ``transformer``, ``ngram``, ``ptb``
(word-level Penn Treebank recipes) and ``gpt2`` (fine-tuning a converted GPT-2 with its own
tokenizer).
"""
