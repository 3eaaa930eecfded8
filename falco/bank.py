"""The fake bank: StyleGAN2 samples and their FaRL embeddings, and nearest-neighbour pairing.

Row i of a bank is fully determined by (networks, seed, psi, i): z_i is drawn on the CPU
from ``torch.Generator().manual_seed(row_seed(seed, i))``, mapped to w, truncated toward
the mean w with psi, rendered, and embedded by FaRL (L2-normalised).  That determinism
is what makes the builder resumable and lets any N extend a smaller bank.

File format (safetensors): ``w`` [N, 512] float32, ``embeddings`` [N, 512] float32,
``seeds`` [N] int64; metadata ``config`` (JSON: psi, seed, generator config, ...).

Built with ``python -m falco.cli bank build --out fake_bank.safetensors --n 60000``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm

from falco import allocator
from falco.config import BankConfig
from falco.device import render_batch as device_render_batch
from falco.errors import WeightsError
from falco.models.farl import farl_preprocess
from falco.output_files import save_tensors

BANK_FORMAT = "falco-fake-bank-v1"


def row_seed(base_seed: int, index: int) -> int:
    # Rows of banks with different base seeds never share a z.
    return (base_seed << 32) + index


@dataclass(frozen=True)
class FakeBank:
    w: torch.Tensor            # [N, D] truncated w of each fake
    embeddings: torch.Tensor   # [N, E] FaRL image embeddings, L2-normalised
    seeds: torch.Tensor        # [N] int64, the seed z was drawn with
    config: dict

    def __len__(self) -> int:
        return self.w.shape[0]

    @classmethod
    def load(cls, path: str | Path) -> FakeBank:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as err:
            raise WeightsError(f"The fake bank {path.name} cannot be read ({err}).") from err
        if meta.get("format") != BANK_FORMAT or not {"w", "embeddings", "seeds"} <= tensors.keys():
            raise WeightsError(f"{path.name} is not a FALCO fake bank.")
        return cls(tensors["w"], tensors["embeddings"], tensors["seeds"], json.loads(meta["config"]))

    def save(self, path: str | Path) -> None:
        _save_rows(Path(path), self.w, self.embeddings, self.seeds, self.config)

    def nearest(self, query: torch.Tensor, k: int = 1, seed: int = 0) -> torch.Tensor:
        return pair_nearest(query, self.embeddings, k=k, seed=seed)

    def slice(self, stop: int) -> FakeBank:
        return FakeBank(self.w[:stop], self.embeddings[:stop], self.seeds[:stop], self.config)


def pair_nearest(query: torch.Tensor, embeddings: torch.Tensor, k: int = 1, seed: int = 0) -> torch.Tensor:
    """Index [B] of the bank row closest in cosine to each query [B, E].

    With k > 1 the row is drawn uniformly among the k nearest, from a generator seeded
    with ``seed``, so a user can ask for another fake and get the same one again later.
    """
    sims = F.normalize(query.float(), dim=-1) @ F.normalize(embeddings.to(query.device).float(), dim=-1).T
    k = max(1, min(k, embeddings.shape[0]))
    if k == 1:
        return sims.argmax(dim=1)
    top = sims.topk(k, dim=1).indices
    pick = torch.randint(k, (query.shape[0],), generator=torch.Generator().manual_seed(seed))
    return top[torch.arange(query.shape[0]), pick.to(top.device)]


@torch.no_grad()
def sample_rows(generator, mean_w: torch.Tensor, farl, seeds: torch.Tensor, psi: float,
                render_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [n, D], embeddings [n, E]) for the given row seeds, on the networks' device; ``render_batch`` images
    per generator call (None: the device's, falco.device.render_batch)."""
    device = mean_w.device
    render_batch = render_batch or device_render_batch(device)
    style_dim = mean_w.shape[-1]
    z = torch.stack([torch.randn(style_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    ws, embs = [], []
    with allocator.reusing():   # each fake reuses the last one's memory
        for zb in z.to(device).split(render_batch):
            w = generator.truncate(generator.mapping(zb), psi, mean_w)
            image = generator(w[:, None].expand(-1, generator.num_ws, -1))
            ws.append(w)
            embs.append(F.normalize(farl.embed(farl_preprocess(image, farl.config["image_size"])), dim=-1))
    return torch.cat(ws).float(), torch.cat(embs).float()


def made_by(bank: FakeBank, generator, mean_w: torch.Tensor, farl) -> bool:
    """Whether ``bank`` comes from these networks: its first row, recomputed, matches."""
    w, emb = sample_rows(generator, mean_w, farl, bank.seeds[:1], bank.config["truncation_psi"], 1)
    return (torch.allclose(w.cpu(), bank.w[:1], atol=1e-3, rtol=1e-3)
            and torch.allclose(emb.cpu(), bank.embeddings[:1], atol=1e-2))


def bank_config(generator, config: BankConfig) -> dict:
    return {"truncation_psi": config.truncation_psi, "seed": config.seed,
            "generator": generator.config, "embedding": "farl"}


def build_bank(out: str | Path, n: int, generator, mean_w: torch.Tensor, farl,
               config: BankConfig = BankConfig(), progress: bool = True,
               rows_done: Callable[[int], None] | None = None) -> FakeBank:
    """Build (or extend, or finish) the bank at ``out`` up to ``n`` rows; ``rows_done(count)`` after each chunk.

    Finished chunks go to ``<out>.parts/`` as they complete; an interrupted build picks up
    after the last complete chunk.  An existing bank at ``out`` made with the same settings
    counts as done rows.  Before reusing any rows, one is recomputed and compared, so rows
    from other networks or settings are never mixed in.
    """
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    meta = bank_config(generator, config)
    done = _existing_rows(out, parts_dir)
    if done:
        _check_compatible(done, meta, generator, mean_w, farl, config)
    count = sum(len(b) for b in done)
    bar = tqdm(total=n, initial=min(count, n), unit="face", desc="fake bank", disable=not progress)
    if rows_done:
        rows_done(min(count, n))
    parts_dir.mkdir(parents=True, exist_ok=True)
    while count < n:
        stop = min(count + config.chunk_rows, n)
        seeds = row_seeds(config.seed, count, stop)
        w, emb = sample_rows(generator, mean_w, farl, seeds, config.truncation_psi, config.render_batch)
        part = FakeBank(w.cpu(), emb.cpu(), seeds, meta)
        part.save(parts_dir / part_name(count))
        done.append(part)
        bar.update(stop - count)
        count = stop
        if rows_done:
            rows_done(count)
    bar.close()
    bank = joined(done, meta).slice(n)
    bank.save(out)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return bank


def row_seeds(base_seed: int, start: int, stop: int) -> torch.Tensor:
    """The seeds of rows ``start`` to ``stop`` (excluded) of a bank with this base seed."""
    return torch.tensor([row_seed(base_seed, i) for i in range(start, stop)], dtype=torch.int64)


def joined(banks: list[FakeBank], config: dict) -> FakeBank:
    """The rows of ``banks``, one after the other, as one bank."""
    return FakeBank(torch.cat([b.w for b in banks]), torch.cat([b.embeddings for b in banks]),
                    torch.cat([b.seeds for b in banks]), config)


def part_name(first_row: int) -> str:
    return f"{first_row:010d}.safetensors"


def contiguous_parts(parts_dir: Path, start: int) -> list[FakeBank]:
    """The part files of ``parts_dir`` (named by their first row) that continue a bank of ``start`` rows, up to the
    first gap (what follows one is recomputed).  A part whose rows a later, longer part holds is skipped."""
    rows: list[FakeBank] = []
    for part in sorted(parts_dir.glob("*.safetensors")) if parts_dir.is_dir() else []:
        first = int(part.stem)
        bank = FakeBank.load(part)
        if first + len(bank) <= start:
            continue
        if first != start:
            break
        rows.append(bank)
        start += len(bank)
    return rows


def _existing_rows(out: Path, parts_dir: Path) -> list[FakeBank]:
    # An existing final file holds rows 0.. already.
    rows = [FakeBank.load(out)] if out.exists() else []
    return rows + contiguous_parts(parts_dir, len(rows[0]) if rows else 0)


def _check_compatible(done: list[FakeBank], meta: dict, generator, mean_w, farl, config: BankConfig) -> None:
    first = done[0]
    if json.loads(json.dumps(meta)) != first.config:
        raise WeightsError("The existing fake bank was built with other settings; "
                           "choose another --out or remove the old file.")
    if not made_by(first, generator, mean_w, farl):
        raise WeightsError("The existing fake bank was built with other network weights; "
                           "choose another --out or remove the old file.")


def _save_rows(path: Path, w, embeddings, seeds, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {"w": w.contiguous(), "embeddings": embeddings.contiguous(), "seeds": seeds.contiguous()},
                 metadata={"format": BANK_FORMAT, "config": json.dumps(config)})
