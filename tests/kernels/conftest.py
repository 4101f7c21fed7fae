"""Without a GPU the Triton kernel runs through Triton's interpreter, switched on before Triton is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
