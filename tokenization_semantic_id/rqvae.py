"""TIGER's RQ-VAE (Rajput et al., NeurIPS 2023, §3.1) as a semantic-ID quantizer, in plain torch.

An MLP encoder maps an item embedding ``x`` to a latent ``z``; ``L`` residual codebooks quantise it
(``r^1 = z``, ``c^l = argmin_k ||r^l - e^l_k||``, ``r^{l+1} = r^l - e^l_{c^l}``, ``z_hat = sum_l e^l_{c^l}``); an MLP
decoder reconstructs ``x`` from ``z_hat``. The loss, per item, is TIGER's

    ||x - decoder(z_hat)||^2 + sum_l ||sg[r^l] - e^l_{c^l}||^2 + beta ||r^l - sg[e^l_{c^l}]||^2

with the straight-through estimator (the decoder reads ``z + sg[z_hat - z]``, so the reconstruction gradient reaches
the encoder). The codebooks start as k-means of the first batch's residuals, level by level, and a code no item of
the last ``dead_code_interval`` batches chose is re-seeded from a residual of the current batch at that level (for
level 1, an encoder output). An item's code is the residual nearest-codeword path of its encoder output, the same
rule :mod:`~tokenization_semantic_id.code_assignment` applies to new items from the stored encoder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .code_assignment import assign_codes
from .quantization import (
    CodebookConfig,
    _check_clustering_input,
    _resolve_device,
    check_positive_ints,
    kmeans,
    nearest_centroid,
)
from .statistics import reconstruction_report

logger = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "adamw": torch.optim.AdamW}


@dataclass
class RQVAEConfig(CodebookConfig):
    """The ``rqvae`` quantizer: TIGER's architecture and loss, with defaults that train in minutes on a CPU.

    Args:
        num_levels: Residual codebooks ``L`` (TIGER: 3).
        codebook_size: Codes per level (TIGER: 256), one int or one per level.
        hidden_sizes: Encoder layer widths (TIGER: 512, 256, 128; the decoder mirrors them).
        latent_dim: Width of the latent ``z`` the codebooks live in (TIGER: 32).
        commitment_weight: ``beta`` of the commitment term (TIGER: 0.25).
        optimizer: ``"adam"`` (default), ``"adamw"`` or ``"adagrad"`` (TIGER's choice, there at lr 0.4).
        learning_rate: Step size (1e-3, the usual choice of public re-implementations with Adam).
        batch_size: Items per step (TIGER: 1024); a catalogue smaller than that is one full batch.
        num_steps: Optimizer steps (3,000: ~250 epochs of Beauty's 12k items, a few minutes on 2 CPU cores; TIGER
            trains far longer on a GPU, up to 20k epochs).
        kmeans_init_iterations: Lloyd iterations of the k-means that initialises each codebook on the first batch's
            residuals (at least ``max(codebook_size)`` rows); 0 starts from random residuals of that batch.
        dead_code_interval: Every this many steps, codes no item of those steps chose are re-seeded from residuals
            of the current batch at their level (0: never).
        log_every: Steps per point of the recorded loss curve (``fit_info["loss_curve"]``).
        seed: Seeds the weights, the batches, the k-means start and the re-seeding.
        device: Where to train (``None``: CUDA when available, else CPU).
    """

    hidden_sizes: Sequence[int] = (512, 256, 128)
    latent_dim: int = 32
    commitment_weight: float = 0.25
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 1024
    num_steps: int = 3000
    kmeans_init_iterations: int = 10
    dead_code_interval: int = 100
    log_every: int = 50
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, "latent_dim", "batch_size", "num_steps", "log_every")
        self.hidden_sizes = tuple(self.hidden_sizes)
        if not all(isinstance(width, int) and width >= 1 for width in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {list(self.hidden_sizes)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if not self.commitment_weight >= 0:
            raise ValueError(f"commitment_weight must be >= 0, got {self.commitment_weight!r}.")
        for name in ("kmeans_init_iterations", "dead_code_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")

    @property
    def quantizer_name(self) -> str:
        return "rqvae"

    def to_dict(self) -> dict:
        config = super().to_dict()
        config["hidden_sizes"] = list(self.hidden_sizes)
        return config


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` through ``widths``."""
    layers: List[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP, ``L`` residual codebooks and a mirrored decoder MLP (see the module docstring)."""

    def __init__(self, input_dim: int, config: RQVAEConfig):
        super().__init__()
        widths = [input_dim, *config.hidden_sizes, config.latent_dim]
        self.encoder = _mlp(widths)
        self.decoder = _mlp(widths[::-1])
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.zeros(size, config.latent_dim)) for size in config.codebook_sizes]
        )
        self.commitment_weight = config.commitment_weight

    def quantize(self, latent: torch.Tensor):
        """Residual quantisation of ``[B, d]`` latents.

        Returns ``(codes [B, L], z_hat [B, d] (no gradient), residuals (L tensors [B, d], no gradient),
        codebook_loss, commitment_loss)``, the losses summed over levels and dimensions, averaged over items."""
        residual, z_hat = latent, torch.zeros_like(latent)
        codes, residuals = [], []
        codebook_loss = commitment_loss = latent.new_zeros(())
        for codebook in self.codebooks:
            code = nearest_centroid(residual.detach(), codebook.detach())
            chosen = codebook[code]
            codebook_loss = codebook_loss + (residual.detach() - chosen).pow(2).sum(dim=1).mean()
            commitment_loss = commitment_loss + (residual - chosen.detach()).pow(2).sum(dim=1).mean()
            codes.append(code)
            residuals.append(residual.detach())
            z_hat = z_hat + chosen.detach()
            residual = residual - chosen.detach()
        return torch.stack(codes, dim=1), z_hat, residuals, codebook_loss, commitment_loss

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        latent = self.encoder(x)
        codes, z_hat, residuals, codebook_loss, commitment_loss = self.quantize(latent)
        straight_through = latent + (z_hat - latent).detach()
        reconstruction = (self.decoder(straight_through) - x).pow(2).sum(dim=1).mean()
        loss = reconstruction + codebook_loss + self.commitment_weight * commitment_loss
        return {
            "loss": loss,
            "reconstruction": reconstruction,
            "codebook": codebook_loss,
            "commitment": commitment_loss,
            "codes": codes,
            "residuals": residuals,
        }

    def encoder_tensors(self) -> Dict[str, torch.Tensor]:
        """The encoder's weights as the tokenizer stores them for cold start: ``encoder.{i}.weight`` / ``.bias`` of
        its ``i``-th linear layer (CPU, float32)."""
        linears = [module for module in self.encoder if isinstance(module, nn.Linear)]
        tensors = {}
        for index, linear in enumerate(linears):
            tensors[f"encoder.{index}.weight"] = linear.weight.detach().float().cpu().clone()
            tensors[f"encoder.{index}.bias"] = linear.bias.detach().float().cpu().clone()
        return tensors


@dataclass
class RQVAEFit:
    """A trained RQ-VAE and the catalogue's codes.

    Attributes:
        model: The trained :class:`RQVAE` (eval mode, on the CPU).
        codes: ``[N, L]`` codes (the encoder's residual nearest-codeword path).
        codebooks: ``L`` tensors ``[K_l, latent_dim]``.
        encoder_tensors: What the tokenizer stores to place new items (see :meth:`RQVAE.encoder_tensors`).
        reconstruction: Decoder reconstruction error of the catalogue (``mse``, ``mean_distance``,
            ``relative_error``) and the latent quantisation error ``||z - z_hat||`` (``latent_*``).
        loss_curve: Every ``log_every`` steps the mean ``loss``, ``reconstruction``, ``codebook`` and ``commitment``
            terms of those steps.
        reseeded_codes: Per level, how many dead codes were re-seeded over the whole run.
        seconds: Training time.
    """

    model: RQVAE
    codes: torch.Tensor
    codebooks: List[torch.Tensor]
    encoder_tensors: Dict[str, torch.Tensor]
    reconstruction: Dict[str, float]
    loss_curve: List[Dict[str, float]] = field(default_factory=list)
    reseeded_codes: List[int] = field(default_factory=list)
    seconds: float = 0.0

    def fit_info(self) -> dict:
        """The JSON-serialisable record ``build_info["fit"]`` keeps."""
        return {
            "steps": self.loss_curve[-1]["step"] if self.loss_curve else 0,
            "seconds": self.seconds,
            "reseeded_codes": self.reseeded_codes,
            "loss_curve": self.loss_curve,
        }


class _Batches:
    """Seeded batches of row indices, each epoch a fresh permutation (the last partial batch of an epoch is
    topped up from the next)."""

    def __init__(self, num_rows: int, batch_size: int, generator: torch.Generator):
        self.num_rows, self.batch_size, self.generator = num_rows, min(batch_size, num_rows), generator
        self.pending = torch.zeros(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while self.pending.numel() < self.batch_size:
            self.pending = torch.cat([self.pending, torch.randperm(self.num_rows, generator=self.generator)])
        rows, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
        return rows


@torch.no_grad()
def _kmeans_init(model: RQVAE, points: torch.Tensor, iterations: int, seed: int) -> None:
    """Each codebook := k-means of the residuals its level sees on ``points`` (earlier levels already set)."""
    residual = model.encoder(points)
    for level, codebook in enumerate(model.codebooks):
        result = kmeans(residual, codebook.shape[0], max_iterations=iterations, seed=seed + level)
        codebook.copy_(result.centroids)
        residual = residual - result.centroids[result.assignment]


@torch.no_grad()
def _reseed_dead_codes(model, optimizer, usage, residuals, generator) -> List[int]:
    """Codes with zero ``usage`` take a random residual of the current batch at their level; their optimizer state is
    cleared. Returns how many codes each level re-seeded."""
    counts = []
    for codebook, used, residual in zip(model.codebooks, usage, residuals):
        dead = (used == 0).nonzero().flatten()
        counts.append(int(dead.numel()))
        if not dead.numel():
            continue
        picks = torch.randint(residual.shape[0], (dead.numel(),), generator=generator).to(residual.device)
        codebook[dead] = residual[picks]
        for value in optimizer.state.get(codebook, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == codebook.shape:
                value[dead] = 0  # Adam's moments; Adagrad's sum restarts from 0 for these rows too
    return counts


def fit_rqvae(embeddings: torch.Tensor, config: RQVAEConfig, progress: bool = True) -> RQVAEFit:
    """Trains an RQ-VAE on ``[N, D]`` item embeddings (validated by the caller) and codes every item.

    Deterministic for a given seed on a given device (and thread count). Raises a ValueError when a codebook is
    larger than the catalogue."""
    _check_clustering_input(embeddings, max(config.codebook_sizes))
    device = _resolve_device(config.device)
    points = embeddings.to(device=device, dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global RNG
        torch.manual_seed(config.seed)
        model = RQVAE(points.shape[1], config).to(device)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.learning_rate)
    batches = _Batches(points.shape[0], config.batch_size, generator)
    first = batches.next()
    init_rows = first
    if first.numel() < max(config.codebook_sizes):  # k-means needs at least K points: widen the first batch
        init_rows = torch.randperm(points.shape[0], generator=generator)[: max(config.codebook_sizes) * 4]
    _kmeans_init(model, points[init_rows.to(device)], config.kmeans_init_iterations, config.seed)

    usage = [torch.zeros(size, dtype=torch.long, device=device) for size in config.codebook_sizes]
    reseeded = [0] * config.num_levels
    curve: List[Dict[str, float]] = []
    window: Dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(range(1, config.num_steps + 1), desc="RQ-VAE", disable=not progress, leave=False)
    model.train()
    for step in bar:
        rows = first if step == 1 else batches.next()
        out = model(points[rows.to(device)])
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        for level, used in enumerate(usage):
            used += torch.bincount(out["codes"][:, level], minlength=used.numel())
        for name in ("loss", "reconstruction", "codebook", "commitment"):
            window[name] = window.get(name, 0.0) + float(out[name].detach())
        if config.dead_code_interval and step % config.dead_code_interval == 0 and step < config.num_steps:
            counts = _reseed_dead_codes(model, optimizer, usage, out["residuals"], generator)
            reseeded = [total + count for total, count in zip(reseeded, counts)]
            for used in usage:
                used.zero_()
        if step % config.log_every == 0 or step == config.num_steps:
            steps_in_window = step - (curve[-1]["step"] if curve else 0)
            curve.append({"step": step, **{name: total / steps_in_window for name, total in window.items()}})
            window = {}
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    return _code_catalogue(model, points, curve, reseeded, seconds)


@torch.no_grad()
def _code_catalogue(model, points, curve, reseeded, seconds, chunk_size: int = 65536) -> RQVAEFit:
    """Codes of every item by the stored-encoder rule (the cold-start rule) and the reconstruction errors."""
    codebooks = [codebook.detach().float().cpu().clone() for codebook in model.codebooks]
    tensors = model.encoder_tensors()
    codes, reconstructed, latents, quantized = [], [], [], []
    for begin in range(0, points.shape[0], chunk_size):
        chunk = points[begin : begin + chunk_size]
        chunk_codes = assign_codes("rqvae", chunk, [c.to(chunk.device) for c in codebooks], tensors)
        z_hat = sum(codebook[chunk_codes[:, level]] for level, codebook in enumerate(model.codebooks))
        codes.append(chunk_codes.cpu())
        latents.append(model.encoder(chunk).cpu())
        quantized.append(z_hat.cpu())
        reconstructed.append(model.decoder(z_hat).cpu())
    latent, z_hat = torch.cat(latents), torch.cat(quantized)
    reconstruction = reconstruction_report(points.cpu(), torch.cat(reconstructed))
    reconstruction.update(
        {f"latent_{name}": value for name, value in reconstruction_report(latent, z_hat).items()},
    )
    logger.info(
        "RQ-VAE: reconstruction error %.4f (relative %.4f), latent quantisation error %.4f; dead codes re-seeded per "
        "level %s",
        reconstruction["mse"],
        reconstruction["relative_error"],
        reconstruction["latent_mse"],
        reseeded,
    )
    return RQVAEFit(model.cpu(), torch.cat(codes), codebooks, tensors, reconstruction, curve, reseeded, seconds)
