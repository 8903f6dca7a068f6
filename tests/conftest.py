"""Suite-wide settings.

Triton kernels are tested on the CPU through Triton's interpreter; the variable must be set
before anything imports triton (``import torch._dynamo`` does), so it is set here, first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
