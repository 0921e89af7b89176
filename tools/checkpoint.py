"""``python tools/checkpoint.py <verb> ...``: the checkpoint tools (``python -m jaxlm.checkpoints``,
``jaxlm-checkpoint``); ``--help`` lists the verbs."""

import sys

from jaxlm.checkpoints.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
