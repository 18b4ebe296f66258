"""Support–query interaction (SQI, docs/methods/sd_fsmis.md §3–§4): an attention processor on every ``attn1``.

The support pass writes each self-attention layer's projected keys and values into a shared bank, grouped by
episode; the query pass concatenates its episode's support keys/values (all shots) to its own along the
token axis: softmax(Q_q [K_q; K_s]ᵀ / √d) [V_q; V_s]. Batched: E episodes with K shots each are written in
one support pass, and N query slices read their own episode's entries through ``query_episode``. The bank
keeps the autograd graph, so gradients reach the support pass.

``positions="sinusoidal"`` (a CPU-profile option, not in the paper) adds a fixed 2-D sinusoidal code of each
token's relative grid position to the inputs of the key and query projections (not the values), in both
passes, so attention can match query tokens to support tokens at the same anatomical place and not by content
alone. Pretrained SD features carry such positional cues; a randomly initialised UNet does not.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor

MODES = ("off", "write", "read")
POSITIONS = ("none", "sinusoidal")


@lru_cache(maxsize=32)
def sinusoidal_positions(height: int, width: int, channels: int) -> Tensor:
    """[height·width, channels] code of each token's relative position (y in the first half, x in the second).

    Coordinates are cell centres in [0, 1], so the grids of different UNet levels share one frame; each half
    holds sin/cos pairs at frequencies π·2^i (i = 0, 1, ...), zero-padded when ``channels`` is not a multiple of 4.
    """
    pairs = channels // 4
    freqs = math.pi * 2.0 ** torch.arange(pairs, dtype=torch.float32)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width

    def code(coords: Tensor) -> Tensor:
        angles = coords[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    grid_y, grid_x = code(ys)[:, None].expand(-1, width, -1), code(xs)[None].expand(height, -1, -1)
    out = torch.cat([grid_y, grid_x], dim=-1).reshape(height * width, 4 * pairs)
    return F.pad(out, (0, channels - 4 * pairs))


class SupportBank:
    """Mode and per-layer storage shared by all bank processors of one UNet."""

    def __init__(self) -> None:
        self.mode = "off"
        self.shots = 1
        self.query_episode: Tensor | None = None
        self.grid: tuple[int, int] | None = None  # latent (height, width), for positional codes
        self.entries: dict[str, tuple[Tensor, Tensor]] = {}

    def write(self, shots: int) -> None:
        """Next UNet pass is the support pass of E episodes × ``shots`` supports (episode-major order)."""
        self.clear()
        self.mode, self.shots = "write", shots

    def read(self, query_episode: Tensor) -> None:
        """Next UNet pass is a query pass; query n reads the entries of episode ``query_episode[n]``."""
        if not self.entries:
            raise RuntimeError("support bank is empty: run the support pass first")
        self.mode, self.query_episode = "read", query_episode

    def clear(self) -> None:
        self.mode, self.query_episode, self.entries = "off", None, {}

    def store(self, name: str, key: Tensor, value: Tensor) -> None:
        """[E·K, heads, T, d] -> per episode [E, heads, K·T, d]."""
        self.entries[name] = (self._group(key), self._group(value))

    def load(self, name: str) -> tuple[Tensor, Tensor]:
        """The support keys and values of each query's episode, [N, heads, K·T, d] each."""
        key, value = self.entries[name]
        return key[self.query_episode], value[self.query_episode]

    def _group(self, x: Tensor) -> Tensor:
        n, heads, tokens, dim = x.shape
        episodes = n // self.shots
        x = x.reshape(episodes, self.shots, heads, tokens, dim).transpose(1, 2)
        return x.reshape(episodes, heads, self.shots * tokens, dim)


class BankAttnProcessor:
    """Self-attention with the support bank (scaled dot-product attention, no xformers)."""

    def __init__(self, bank: SupportBank, name: str, positions: str = "none") -> None:
        if positions not in POSITIONS:
            raise ValueError(f"unknown bank positions '{positions}' (known: {', '.join(POSITIONS)})")
        self.bank = bank
        self.name = name
        self.positions = positions

    def _position_code(self, tokens: int, channels: int, like: Tensor) -> Tensor:
        """The sinusoidal code of this layer's token grid, derived from the latent grid of the bank."""
        if self.bank.grid is None:
            raise RuntimeError(f"{self.name}: positional codes need the latent grid (SupportBank.grid)")
        height, width = self.bank.grid
        while height * width > tokens:  # each UNet level halves the grid, rounding up (stride-2 convolutions)
            height, width = -(-height // 2), -(-width // 2)
        if height * width != tokens:
            raise RuntimeError(
                f"{self.name}: bank_positions: {tokens} tokens are no level of the {self.bank.grid} latent grid"
            )
        code = sinusoidal_positions(height, width, channels)
        return code.to(device=like.device, dtype=like.dtype)

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: the bank processor serves mask-free self-attention only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)

        located = hidden_states
        if self.positions == "sinusoidal":
            located = hidden_states + self._position_code(tokens, hidden_states.shape[-1], hidden_states)
        query = heads(attn.to_q(located))
        key = heads(attn.to_k(located))
        value = heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.bank.mode == "write":
            self.bank.store(self.name, key, value)
        elif self.bank.mode == "read":
            support_key, support_value = self.bank.load(self.name)
            key = torch.cat([key, support_key], dim=2)
            value = torch.cat([value, support_value], dim=2)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_bank(unet: UNet2DConditionModel, positions: str = "none") -> SupportBank:
    """Give every ``attn1`` a bank processor (all sharing one bank); other layers get plain SDPA."""
    bank = SupportBank()
    processors = {
        name: BankAttnProcessor(bank, name, positions)
        if name.endswith("attn1.processor")
        else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return bank
