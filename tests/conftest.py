"""Test-session settings: one torch thread (tests are many small ops; OpenMP spinning across a busy
2-core machine makes them 10x slower and less deterministic)."""
import torch

torch.set_num_threads(1)
