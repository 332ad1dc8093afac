"""The engine side of the mixer protocol (MIXER_PROTOCOL.md): model log-prob rows on the
device -> mixed target log-probs on the host, with only (n,) arrays crossing.

Two ways in. `score_through_table`: every run's, the node's one table
(evalkit.engine.nodetable), whose owner learned the positions in the strategy's learning
order; this reads their aux and combines. `score_through_mixer`: this process's own mixer,
learning per token in the order the strategy passes positions (the audit's path: it takes
probe distributions from the cache's state at the moment). Either way scores do not depend
on how windows are batched. Entropy (float64, from the log-softmax
rows), the target's log-prob and the hint's log-prob are computed on the device; whole rows
reach the host only at the few positions the audit probes. A probe's distribution is taken
from the cache's state at that moment: everything before it advanced, nothing after.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.engine.probes import Timer, active, probe_rows


def device_entropy(logp: torch.Tensor) -> torch.Tensor:
    """(n, V) log-softmax rows -> (n,) float64 entropy in nats, on their device.
    exp(-inf) * -inf would be nan: clamping -inf to a finite floor makes those terms 0.
    On the CPU in blocks of ~1 MiB of float64 (2.4x faster at V = 8192 than whole batches,
    whose temporaries leave the cache); each row's sum is the same either way."""
    logp = logp.detach()
    if logp.device.type != "cpu":
        lp = logp.double()
        return -(lp.exp() * lp.clamp(min=-1e300)).sum(-1)
    out = torch.empty(logp.shape[0], dtype=torch.float64)
    k = max(1, (1 << 17) // max(logp.shape[-1], 1))
    for a in range(0, logp.shape[0], k):
        lp = logp[a:a + k].double()
        out[a:a + k] = -(lp.exp() * lp.clamp(min=-1e300)).sum(-1)
    return out


def _gather(logp: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    return logp.gather(1, cols[:, None])[:, 0].double().cpu().numpy()


def _device_inputs(mixer, logp: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float64 (n,) entropy (zeros when the mixer ignores it) and target log-probs, made on the device."""
    if getattr(mixer, "needs_entropy", True):
        entropy = device_entropy(logp).cpu().numpy()  # (n,)
    else:  # e.g. the records' constant-strength tilt: O(V) work per token saved
        entropy = np.zeros(logp.shape[0])
    return entropy, _gather(logp, targets)


def _hint_logp(mixer, logp: torch.Tensor, auxes: list) -> np.ndarray | None:
    hints = [mixer.hint_tokens(aux) for aux in auxes]
    if not hints or hints[0] is None:
        return None
    cols = torch.from_numpy(np.maximum(np.concatenate(hints), 0)).to(logp.device)
    return _gather(logp, cols)


def score_through_table(table, positions: np.ndarray, steps: np.ndarray, logp: torch.Tensor,
                        targets: torch.Tensor) -> np.ndarray:
    """Mixed log-probs of the targets (float64 (n,)) from the node's table (evalkit.engine.nodetable),
    whose owner learns `positions` at `steps` of its timeline (`table.steps_of`). The device
    work comes first; then this waits, if at all, for the owner's pass to reach them."""
    logp = logp.detach()
    entropy, target_logp = _device_inputs(table, logp, targets)
    aux = table.read(positions, steps)
    return table.combine(aux, target_logp, _hint_logp(table, logp, [aux]), entropy)


def score_through_mixer(mixer, positions: np.ndarray, logp: torch.Tensor, targets: torch.Tensor,
                        probe_idx=()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Mixed log-probs of the targets (float64 (n,)) and {position: full (V,) distribution}
    for the indices in `probe_idx`. The mixer learns every position, in order."""
    if not hasattr(mixer, "advance"):
        return _score_whole_rows(mixer, positions, logp, probe_idx)
    logp = logp.detach()
    n = positions.shape[0]
    entropy, target_logp = _device_inputs(mixer, logp, targets)
    auxes, bounds, probes, a = [], [], {}, 0
    for i in sorted(int(i) for i in probe_idx):
        if i > a:
            with Timer(mixer):  # host time of the cache (the audit's budget): not the probe below
                auxes.append(mixer.advance(positions[a:i]))
            bounds.append((a, i))
        row = probe_rows(logp[i:i + 1])[0]  # (V,) one probe row, the only whole row sent, float64-renormalized
        probes[int(positions[i])] = mixer.distribution(int(positions[i]), row, float(entropy[i]))
        _own(mixer, int(positions[i]))
        a = i
    if n > a:
        with Timer(mixer):
            auxes.append(mixer.advance(positions[a:n]))
        bounds.append((a, n))
    hint_logp = _hint_logp(mixer, logp, auxes)
    out = np.empty(n, np.float64)
    with Timer(mixer):
        for aux, (a, b) in zip(auxes, bounds):
            out[a:b] = mixer.combine(aux, target_logp[a:b], None if hint_logp is None else hint_logp[a:b],
                                     entropy[a:b])
    return out, probes


def _own(mixer, position: int) -> None:
    """The mixer's own distribution at a probe, from the same state, for the audit to sum
    apart from the combined one (optional hook `own_distribution(position) -> (V,) log p`)."""
    own, cap = getattr(mixer, "own_distribution", None), active()
    if own is not None and cap is not None:
        dist = own(position)
        if dist is not None:  # a tilt has no distribution of its own
            cap.own[position] = np.asarray(dist, np.float64)


def _score_whole_rows(mixer, positions, logp, probe_idx):
    """Mixers that need whole rows on the host (the audit's illegal fixtures in caches/illegal.py
    and evalkit/audit/gallery/): score(positions, rows), distribution(positions, rows),
    update(positions) after the call's scores, as those fixtures were written."""
    rows = logp.detach().double().cpu().numpy()
    probes = {int(positions[i]): mixer.distribution(positions[i:i + 1], rows[i:i + 1])[0] for i in probe_idx}
    for i in probe_idx:
        _own(mixer, int(positions[i]))
    with Timer(mixer):
        out = np.asarray(mixer.score(positions, rows), np.float64)
        mixer.update(positions)
    return out, probes
