"""Shared test setup: tests train small nets on CPU; one thread keeps parallel runs fair and fast."""

import torch

torch.set_num_threads(1)
