"""SIREN INRs (DWSNets / NFN): many fitted at once, rendered in batches, and the member's image.

A member is the DWSNets SIREN (Navon et al., ICML 2023; Sitzmann et al., NeurIPS 2020)::

    f(c) = W2 sin(w0 (W1 sin(w0 (W0 c + b0)) + b1)) + b2 + 0.5,    w0 = 30

with parameters named ``seq.{0,1,2}.weight/bias`` as in the published INR files (so our members and
theirs give graphs of the same structure), coordinates ``c = (x, y) = (column, row)`` of the pixel
grid in [-1, 1] as DWSNets renders its INRs (:func:`pixel_coords`; their ``make_coordinates``), pixel
values in [0, 1]. So ``render_sirens`` shows published DWSNets INRs upright, and ours render upright in
their code.

Fitting (:func:`fit_sirens`) is full-batch Adam on each image's pixel MSE, ``M`` INRs at a time,
with a hand-written forward and backward in one ``[M, features, pixels]`` layout: every layer is one
batched matmul over members, the sine's pre-activation is reused in place for its cosine in the
backward, and the ``w0`` factors are applied to the small parameter and gradient tensors, never to
the ``[M, F, P]`` activations. Each member's loss reaches only its own parameters and every kernel
treats members independently, so a batch is exactly ``M`` independent fits, bit for bit whatever the
batch composition (tested, with the gradients checked against autograd on
:class:`~neuralgraph.data.arch.SirenINR`). Measured speed and PSNR: ``benchmarks/perf/zoo.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: The architecture description of every member (:func:`neuralgraph.data.arch.build_model`).
SIREN_DESC: dict[str, Any] = {"family": "siren", "in_dim": 2, "hidden": [32, 32], "out_dim": 1,
                              "w0": 30.0, "output_offset": 0.5}


#: The pixel-grid convention of :func:`pixel_coords` (recorded in INR zoos' ``zoo.json``).
COORDINATES = "x=column,y=row in [-1,1] (DWSNets make_coordinates)"


def param_shapes(desc: dict[str, Any] = SIREN_DESC) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a SIREN description (``seq.{i}.weight`` ``[out, in]``, ``seq.{i}.bias``)."""
    dims = [desc["in_dim"], *desc["hidden"], desc["out_dim"]]
    out: dict[str, tuple[int, ...]] = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"seq.{i}.weight"] = (b, a)
        out[f"seq.{i}.bias"] = (b,)
    return out


def pixel_coords(height: int, width: int) -> Tensor:
    """Pixel coordinates ``[height * width, 2]``, pixels row-major: pixel ``(i, j)`` (row ``i``, column ``j``)
    gets ``(x, y) = (linspace(-1, 1, width)[j], linspace(-1, 1, height)[i])``, as DWSNets' ``make_coordinates``
    (x first; note SIREN's ``get_mgrid`` puts the row first)."""
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([cols, rows], -1).reshape(-1, 2)


def psnr(mse: Tensor | np.ndarray | float) -> Tensor:
    """PSNR in dB of a pixel MSE for images in [0, 1]: ``-10 log10(mse)``."""
    return -10.0 * torch.log10(torch.as_tensor(mse, dtype=torch.float64))


def init_sirens(seeds: list[int], desc: dict[str, Any] = SIREN_DESC) -> dict[str, Tensor]:
    """SIREN initialisation (Sitzmann et al. 2020, sec. 3.2), one member per seed, stacked ``[M, ...]``.

    First layer weights ``U(-1/fan_in, 1/fan_in)``, later weights ``U(-sqrt(6/fan_in)/w0, +)``;
    biases as ``nn.Linear`` (``U(-1/sqrt(fan_in), +)``). A member's init depends on its seed only.
    """
    w0 = float(desc["w0"])
    shapes = param_shapes(desc)
    out: dict[str, list[Tensor]] = {k: [] for k in shapes}
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        for name, shape in shapes.items():
            fan_in = shapes[name.replace("bias", "weight")][1]
            if name.endswith("bias"):
                bound = 1.0 / math.sqrt(fan_in)
            elif name == "seq.0.weight":
                bound = 1.0 / fan_in
            else:
                bound = math.sqrt(6.0 / fan_in) / w0
            out[name].append((torch.rand(shape, generator=gen) * 2 - 1) * bound)
    return {k: torch.stack(v) for k, v in out.items()}


def render_sirens(params: dict[str, Tensor], height: int, width: int, w0: float = 30.0,
                  output_offset: float = 0.5) -> Tensor:
    """Evaluate ``B`` SIRENs on the pixel grid (differentiable, on the parameters' device).

    Args:
        params (dict): ``seq.{i}.weight`` ``[B, out, in]`` and ``seq.{i}.bias`` ``[B, out]``.
        height (int), width (int): the grid.
        w0 (float, optional): sine frequency. (default: ``30.0``)
        output_offset (float, optional): added to the output. (default: ``0.5``)

    Returns:
        images ``[B, height, width]`` (single output channel).
    """
    n = len([k for k in params if k.endswith(".weight")])
    w = params["seq.0.weight"]
    h = pixel_coords(height, width).to(w.device, w.dtype).T.expand(w.shape[0], -1, -1)   # [B, 2, P]
    for i in range(n):
        h = torch.baddbmm(params[f"seq.{i}.bias"].unsqueeze(-1), params[f"seq.{i}.weight"], h)  # [B, out, P]
        if i < n - 1:
            h = torch.sin(w0 * h)
    return (h[:, 0] + output_offset).view(-1, height, width)


@dataclass(frozen=True)
class FitConfig:
    """How each INR is fitted: full-batch Adam at a constant learning rate on the pixel MSE.

    Args:
        steps: Adam steps (one step = one pass over all pixels).
        lr: learning rate (constant: cosine decay and warm-up were measured slower to a given PSNR at
            these step counts, see docs/formats.md).
        betas: Adam betas.
        eps: Adam epsilon.
        batch: members fitted together (one batched matmul per layer; 8 measured fastest on one core:
            the ``[batch, 32, 784]`` activations stay in cache).
    """

    steps: int = 80
    lr: float = 4e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch: int = 8


@dataclass
class FitResult:
    params: dict[str, Tensor]   # name -> [M, *shape] (final parameters)
    mse: Tensor                 # [M] pixel MSE of the final parameters
    psnr: Tensor                # [M] dB


def _loss_and_grads(p: dict[str, Tensor], y: Tensor, coords: Tensor, w0: float,
                    want_grads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixel MSE per member ``[M]`` and its gradients, for a ``2 -> hidden -> 1`` SIREN.

    ``y`` ``[M, P]`` targets minus the output offset, ``coords`` ``[2, P]`` (:func:`pixel_coords`
    transposed). Hidden pre-activations are kept scaled by ``w0`` (``z = w0 (W h + b)``, computed as
    ``(w0 W) h + w0 b`` on the small parameters), so no pass over ``[M, F, P]`` spends time on ``w0``;
    the gradients of the unscaled parameters get the factor back, again on the small tensors.
    """
    n = len(p) // 2
    M = y.shape[0]
    h = coords.expand(M, -1, -1)                                              # [M, 2, P]
    hs, zs = [h], []
    for i in range(n - 1):
        z = torch.baddbmm((w0 * p[f"seq.{i}.bias"]).unsqueeze(-1), w0 * p[f"seq.{i}.weight"], h)  # [M, F, P]
        h = torch.sin(z)
        zs.append(z)
        hs.append(h)
    out = torch.baddbmm(p[f"seq.{n - 1}.bias"].unsqueeze(-1), p[f"seq.{n - 1}.weight"], h)[:, 0]  # [M, P]
    err = out - y                                                             # [M, P]
    mse = err.square().mean(1)                                                # [M]
    if not want_grads:
        return mse, {}
    g: dict[str, Tensor] = {}
    d = (2.0 / err.shape[1]) * err.unsqueeze(1)                               # [M, 1, P]  dL/d out
    g[f"seq.{n - 1}.weight"] = torch.bmm(d, hs[-1].transpose(1, 2))           # [M, 1, F]
    g[f"seq.{n - 1}.bias"] = d.sum(-1)                                        # [M, 1]
    W = p[f"seq.{n - 1}.weight"]
    for i in range(n - 2, -1, -1):
        # dL/dz_i, z_i = w0 (W_i h_i + b_i):  (W_{i+1}^T d) * cos(z_i)
        if W.shape[1] == 1:                                                   # the output layer: an outer product
            d = torch.cos_(zs[i]).mul_(W.transpose(1, 2)).mul_(d)             # [M, F, P]
        else:
            d = torch.bmm(W.transpose(1, 2), d).mul_(torch.cos_(zs[i]))       # [M, F, P]
        g[f"seq.{i}.weight"] = torch.bmm(d, hs[i].transpose(1, 2)).mul_(w0)    # [M, F, F_in]
        g[f"seq.{i}.bias"] = d.sum(-1).mul_(w0)                               # [M, F]
        W = w0 * p[f"seq.{i}.weight"]
    return mse, g


def fit_sirens(images: Tensor | np.ndarray, seeds: list[int], cfg: FitConfig = FitConfig(),
               desc: dict[str, Any] = SIREN_DESC, device: str | torch.device = "cpu") -> FitResult:
    """Fit one SIREN per image, ``cfg.batch`` at a time (see the module docstring).

    Args:
        images (Tensor): ``[M, H, W]`` pixel values in [0, 1].
        seeds (list of int): one init seed per image.
        cfg (FitConfig): steps, learning rate schedule, batch size.
        desc (dict): a 2 -> hidden -> 1 ``siren`` description (default :data:`SIREN_DESC`).
        device (str or torch.device): where to fit (initialisations are drawn on the CPU). (default: ``"cpu"``)

    Returns:
        :class:`FitResult` with the final parameters (CPU, float32), MSE and PSNR per image.
    """
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images, dtype=torch.float32)
    if images.dim() != 3:
        raise ValueError(f"images must be [M, H, W], got shape {tuple(images.shape)}")
    if len(seeds) != len(images):
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {len(images)} images")
    if desc["in_dim"] != 2 or desc["out_dim"] != 1:
        raise ValueError(f"fit_sirens fits 2 -> ... -> 1 SIRENs on images, got {desc}")
    parts = [_fit_batch(images[i:i + cfg.batch], seeds[i:i + cfg.batch], cfg, desc, torch.device(device))
             for i in range(0, len(images), cfg.batch)]
    params = {k: torch.cat([pt[0][k] for pt in parts]) for k in parts[0][0]}
    mse = torch.cat([pt[1] for pt in parts])
    return FitResult(params, mse, psnr(mse).float())


def _fit_batch(images: Tensor, seeds: list[int], cfg: FitConfig, desc: dict[str, Any], device: torch.device):
    M, H, W = images.shape
    w0 = float(desc["w0"])
    images = images.to(device)
    init = {k: v.to(device) for k, v in init_sirens(seeds, desc).items()}
    names = list(init)
    sizes = [init[k][0].numel() for k in names]
    flat = torch.cat([init[k].reshape(M, -1) for k in names], 1)            # [M, n_params]
    views = {k: v.view(init[k].shape) for k, v in zip(names, flat.split(sizes, 1))}
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    y = images.reshape(M, H * W) - float(desc["output_offset"])             # [M, P]
    coords = pixel_coords(H, W).to(device).T.contiguous()                    # [2, P]
    b1, b2 = cfg.betas
    for step in range(cfg.steps):
        p = {k: t.contiguous() for k, t in views.items()}
        _, g = _loss_and_grads(p, y, coords, w0)
        grad = torch.cat([g[k].reshape(M, -1) for k in names], 1)          # [M, n_params]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = step + 1
        lr = cfg.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        flat.addcdiv_(m, v.sqrt().add_(cfg.eps * math.sqrt(1 - b2 ** t)), value=-lr)
    p = {k: t.contiguous() for k, t in views.items()}
    mse, _ = _loss_and_grads(p, y, coords, w0, want_grads=False)
    return {k: t.cpu().clone() for k, t in p.items()}, mse.cpu()


def member_image(member) -> np.ndarray:
    """The image ``[H, W]`` (float32 in [0, 1]) that a zoo member (an INR of an INR preset) was fitted to.

    Raises:
        ValueError: the member stores no image (e.g. a DWSNets INR: the published files hold weights only).
    """
    try:
        return np.asarray(member.extra("image"), dtype=np.float32)
    except KeyError as e:
        raise ValueError(f"no original image for member {member.run_id!r}: {e.args[0]}. Images are stored by "
                         "the inr-* presets of `python -m neuralgraph.zoo.generate`; for other INRs render "
                         "the member itself with render_sirens") from None
