"""The pieces of a FIND decoder layer: masked cross-attention, prototyped self-attention, FFN.

All three are post-norm residual blocks as in Mask2Former (``x = norm(x + dropout(block(x)))``);
positional embeddings are added to queries and keys, never to values.

Masks are boolean with **True = may attend**. Each attention layer makes exactly one call to
:func:`torch.nn.functional.scaled_dot_product_attention` with a boolean ``attn_mask`` of shape
``[B,1,S,Skv]`` (one mask broadcast over the heads).

The empty-row rule (Mask2Former): a query whose mask allows no key at all (e.g. a proposal whose
previous-layer mask is empty at this resolution) would get a softmax over nothing, i.e. NaN.
Such a row is opened instead: it attends to every key. This is done without branching, by
``attend | ~attend.any(-1, keepdim=True)``, so it costs one reduction and keeps the graph static.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


def attention_mask(attend: Tensor | None, batch: int, num_queries: int, num_keys: int) -> Tensor | None:
    """Turn a "may attend" mask into SDPA's boolean ``attn_mask``, opening empty rows.

    Args:
        attend: bool[B,S,Skv] or bool[S,Skv] (shared by the batch), True where query s may attend
            key k; None for no restriction.
        batch: B.
        num_queries: S.
        num_keys: Skv.

    Returns:
        bool[B,1,S,Skv] (or bool[1,1,S,Skv] for a shared mask) where a row with no allowed key is
        all True (the empty-row rule), or None when ``attend`` is None.

    """
    if attend is None:
        return None
    if attend.dtype != torch.bool:
        raise TypeError(f"attention masks must be boolean (True = may attend), got {attend.dtype}")
    if attend.dim() == 2:
        attend = attend.unsqueeze(0)
    if attend.dim() != 3 or attend.shape[-2:] != (num_queries, num_keys) or attend.shape[0] not in (1, batch):
        raise ValueError(
            f"attention mask should be bool[{batch},{num_queries},{num_keys}], got {tuple(attend.shape)}"
        )
    attend = attend | ~attend.any(dim=-1, keepdim=True)
    return attend.unsqueeze(1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over separate query, key and value inputs through one SDPA call.

    Args:
        dim: width D of queries, keys and values.
        heads: number of heads (must divide ``dim``).
        dropout: attention dropout (training only).

    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        # No key bias: it adds q . b to every score of a query's row, which softmax cancels, so its
        # gradient is float rounding only, and Adam, dividing by that noise's own scale, would move
        # it by up to lr per step for nothing (and differently on every rank split).
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attend: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            query: float[B,S,D].
            key: float[B,Skv,D].
            value: float[B,Skv,D].
            attend: bool[B,S,Skv] or bool[S,Skv], True = may attend; None = everything.

        Returns:
            float[B,S,D].

        """
        batch, num_queries, dim = query.shape
        num_keys = key.shape[1]
        mask = attention_mask(attend, batch, num_queries, num_keys)

        def split(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.heads, dim // self.heads)).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class CrossAttentionLayer(nn.Module):
    """Queries read a memory (image features or prompt tokens) under a boolean mask; post-norm.

    Args:
        dim: width D.
        heads: number of attention heads.
        dropout: dropout on attention weights and on the residual branch.

    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        attend: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
    ) -> Tensor:
        """``norm(queries + attention(queries + query_pos, memory + memory_pos, memory))``.

        Args:
            queries: float[B,S,D].
            memory: float[B,Skv,D].
            attend: bool[B,S,Skv] (or bool[S,Skv]), True = may attend; rows with no True attend
                everything (the empty-row rule); None = no restriction.
            query_pos: float[B,S,D] (or broadcastable) positional embedding of the queries, or None.
            memory_pos: float[B,Skv,D] (or broadcastable) positional embedding of the memory, or None.

        Returns:
            float[B,S,D].

        """
        update = self.attention(_with_pos(queries, query_pos), _with_pos(memory, memory_pos), memory, attend)
        return self.norm(queries + self.dropout(update))


class SelfAttentionLayer(nn.Module):
    """The sequence attends to itself under a boolean (prototype) mask; post-norm.

    Args:
        dim: width D.
        heads: number of attention heads.
        dropout: dropout on attention weights and on the residual branch.

    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, attend: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        """``norm(x + attention(x + pos, x + pos, x))``.

        Args:
            x: float[B,S,D].
            attend: bool[B,S,S] (or bool[S,S]), True where row s may attend column t; empty rows
                attend everything; None = no restriction.
            pos: float[B,S,D] (or broadcastable) positional embedding, or None.

        Returns:
            float[B,S,D].

        """
        qk = _with_pos(x, pos)
        return self.norm(x + self.dropout(self.attention(qk, qk, x, attend)))


class FFNLayer(nn.Module):
    """Two-layer MLP with ReLU, residual and post-norm.

    Args:
        dim: width D.
        ffn_dim: hidden width.
        dropout: dropout inside the MLP and on the residual branch.

    """

    def __init__(self, dim: int, ffn_dim: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """float[...,D] -> float[...,D]."""
        update = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout(update))


class DecoderLayer(nn.Module):
    """One FIND decoder layer: masked cross-attention -> prototyped self-attention -> FFN.

    Only some embedding types read the memory in cross-attention (in FIND, tokens do not). Rather
    than gathering those rows out and scattering them back, ``cross_rows`` marks them: the other rows
    leave the cross-attention block unchanged (no residual update and no norm), which is exactly
    leaving them out of it, since attention rows are independent.

    Args:
        dim: width D.
        heads: number of attention heads.
        ffn_dim: hidden width of the FFN.
        dropout: dropout of all three blocks.

    """

    def __init__(self, dim: int, heads: int, ffn_dim: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.cross_attention = CrossAttentionLayer(dim, heads, dropout)
        self.self_attention = SelfAttentionLayer(dim, heads, dropout)
        self.ffn = FFNLayer(dim, ffn_dim, dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        cross_attend: Tensor | None = None,
        self_attend: Tensor | None = None,
        pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        cross_rows: Tensor | None = None,
    ) -> Tensor:
        """Run the three blocks.

        Args:
            x: float[B,S,D], the concatenated sequence of all embedding types.
            memory: float[B,Skv,D], what cross-attention reads (one image-feature level, say).
            cross_attend: bool[B,S,Skv] (or bool[S,Skv]), True = may attend, or None.
            self_attend: bool[B,S,S] (or bool[S,S]), True = may attend, or None.
            pos: float[B,S,D] (or broadcastable) positional embedding of the sequence, or None.
            memory_pos: float[B,Skv,D] (or broadcastable) positional embedding of the memory, or None.
            cross_rows: bool[B,S] or bool[S], rows that take part in cross-attention; None = all.

        Returns:
            float[B,S,D].

        """
        crossed = self.cross_attention(x, memory, cross_attend, pos, memory_pos)
        if cross_rows is not None:
            crossed = torch.where(cross_rows.unsqueeze(-1), crossed, x)
        return self.ffn(self.self_attention(crossed, self_attend, pos))
