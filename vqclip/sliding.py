"""Sliding-window sampling of a VQGAN token grid with the taming GPT (Esser et al. 2021, section 3.2 and
`scripts/sample_conditional.py`): every token is predicted from a 16x16 window around it, clamped to the
canvas, by a GPT that sees the conditioning token and the window's tokens before it in raster order.

Two schedules produce the same tokens under greedy decoding:
- "raster": the reference (taming's loop): one position per GPT call, the whole window fed;
- "wavefront": every position whose window inputs are final is computed in the same GPT call. A token
  needs its left neighbour and the row above up to the right edge of its window, so row i can start
  once row i-1 has passed column 15, and each row ends right after the one above. Each call feeds only
  the causal prefix of each window up to the sampled position (later tokens are masked anyway), which
  halves the work in the interior.
"""

from collections.abc import Callable

import torch

from vqclip.events import Progress, ProgressFn, ignore


def window_start(pos, size: int, window: int = 16):
    """First row/column of the window for a token at `pos` on a side of `size` (centred, clamped);
    `pos` may be an int or a tensor of positions."""
    if isinstance(pos, torch.Tensor):
        return (pos - window // 2).clamp(0, size - window)
    return min(max(pos - window // 2, 0), size - window)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then keep the top_k logits, then the smallest set whose probability exceeds top_p
    (the first token crossing the threshold is kept); removed entries become -inf."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # shift right: keep the token that crosses top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def schedule(height: int, width: int, window: int = 16, order: str = "wavefront") -> list[list[tuple[int, int]]]:
    """Groups of positions, each group computed by one GPT call, in an order that keeps every input final."""
    if order == "raster":
        return [[(i, j)] for i in range(height) for j in range(width)]
    ww = min(window, width)
    t = [[0] * width for _ in range(height)]
    for i in range(height):
        for j in range(width):
            ready = t[i][j - 1] if j else 0
            if i:
                right = window_start(j, width, ww) + ww - 1  # the row above must be final up to here
                ready = max(ready, t[i - 1][right])
            t[i][j] = ready + 1
    groups: dict[int, list] = {}
    for i in range(height):
        for j in range(width):
            groups.setdefault(t[i][j], []).append((i, j))
    return [groups[k] for k in sorted(groups)]


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (N, vocab), drawn on the generator's device: the probabilities go to it,
    the draw comes back to theirs. ATen draws only with a generator of the kernel's own device, and drawing
    from vqclip's CPU generators keeps a seed's tokens the same on every device (up to the probabilities'
    rounding)."""
    home = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(home), 1, generator=generator)[:, 0].to(probs.device)


@torch.no_grad()
def sample_tokens(
    gpt,
    idx: torch.Tensor,
    cond: torch.Tensor,
    *,
    window: int = 16,
    order: str = "wavefront",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    bias: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn = ignore,
) -> torch.Tensor:
    """Resample every token of a grid with the GPT in sliding 16x16 windows; returns a new grid.

    Args:
        gpt: a vqclip.models.gpt.GPT.
        idx: the token grid (B, H, W); its tokens are the window context until they are resampled.
        cond: the conditioning token (B, 1): a class id, or the SOS token of unconditional models.
        window: the window side in tokens (16 for the public checkpoints).
        order: "wavefront" (batched) or "raster" (the reference order, one token per call).
        temperature, top_k, top_p: sampling filters; greedy: take the argmax instead of sampling.
        bias: optional (batch, rows, cols) -> (N, vocab) logits added before filtering (e.g. an anchor prior).
        generator: the random generator for sampling (seeded for reproducibility). Tokens are drawn on its
            device (vqclip's generators are CPU ones) from the probabilities copied there, so a seed draws the
            same tokens on every device, and a CPU generator never meets a CUDA kernel (ATen refuses that).
        progress: receives a Progress(job="sliding", unit="call") after each GPT call; `extra` has the
            tokens resampled so far and in all.
    """
    b, height, width = idx.shape
    wh, ww = min(window, height), min(window, width)
    grid = idx.clone().reshape(b, height * width)
    device = idx.device
    # the positions and windows of each call are worked out on the CPU (no value is read back from the device)
    offsets = (torch.arange(wh)[:, None] * width + torch.arange(ww)[None, :]).reshape(-1)
    groups = schedule(height, width, window, order)
    done = 0
    for call, group in enumerate(groups):
        rows = torch.tensor([p[0] for p in group])
        cols = torch.tensor([p[1] for p in group])
        r0, c0 = window_start(rows, height, wh), window_start(cols, width, ww)
        local = (rows - r0) * ww + (cols - c0)  # tokens of the window before the sampled one
        flat = (r0 * width + c0)[:, None] + offsets[None, :]  # (N, wh*ww) grid indices of each window
        n = len(group)
        # the reference feeds the whole window (cond + all but its last token); the wavefront only the prefix
        seq_len = wh * ww if order == "raster" else int(local.max()) + 1
        windows = grid[:, flat[:, : seq_len - 1].to(device)].reshape(b * n, seq_len - 1)  # (B*N, L-1)
        seq = torch.cat([cond.repeat_interleave(n, 0).reshape(b * n, 1), windows], 1)
        lengths = (local + 1).repeat(b).to(device)  # the output at index `local` predicts the sampled token
        logits = gpt.last_logits(seq, lengths).float()  # (B*N, vocab)
        if bias is not None:
            batch = torch.arange(b, device=device).repeat_interleave(n)
            logits = logits + bias(batch, rows.repeat(b).to(device), cols.repeat(b).to(device))
        if greedy:
            new = logits.argmax(-1)
        else:
            new = sample(filter_logits(logits, temperature, top_k, top_p).softmax(-1), generator)
        grid[:, (rows * width + cols).to(device)] = new.reshape(b, n).to(device)
        done += n
        progress(
            Progress(
                "sliding",
                call + 1,
                len(groups),
                unit="call",
                stage="transformer",
                extra={"tokens": done, "of": height * width},
            )
        )
    return grid.reshape(b, height, width)
