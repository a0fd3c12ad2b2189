"""A fingerprint of this machine's float32 CPU kernels, independent of sgtool's code.

Bit-identical retraining (tests/test_compat.py) holds on one kind of CPU: oneDNN and MKL pick
their kernels by the instructions the CPU has, and kernels of different CPUs round differently.
The fingerprint is the sha256 of a few fixed computations through the kernels a training step
uses (convolution, matrix products, max-pool, an optimiser step), with 2 threads as the fixtures
were written; two machines with the same fingerprint compute the same bits.
"""

import hashlib

import torch
import torch.nn.functional as F


def cpu_kind() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(64, 1, 28, 28, generator=g)
        w1 = (torch.randn(32, 1, 3, 3, generator=g) * 0.3).requires_grad_()
        w2 = (torch.randn(64, 32, 3, 3, generator=g) * 0.05).requires_grad_()
        w3 = (torch.randn(10, 64 * 12 * 12, generator=g) * 0.01).requires_grad_()
        h = F.max_pool2d(F.relu(F.conv2d(F.relu(F.conv2d(x, w1)), w2)), 2)
        loss = F.cross_entropy(F.linear(h.flatten(1), w3), torch.arange(64) % 10)
        loss.backward()
        opt = torch.optim.Adam([w1, w2, w3], lr=1e-3)
        opt.step()
        digest = hashlib.sha256()
        for t in (h, loss, w1, w2, w3, w1.grad, w2.grad, w3.grad):
            digest.update(t.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(cpu_kind())
