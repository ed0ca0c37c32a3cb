"""Steering against its baselines (after AxBench, which found SAE steering behind prompting and DiffMean): for a
concept given by example texts with it and without it, how much of the concept can each method put into the model's
generations, and at what cost in fluency?

- **SAE feature**: the latent whose mean code differs most between the two sets of texts (or the one given), its
  decoder direction added at the hook the SAE writes;
- **DiffMean**: the difference of the mean activations at that hook over the two sets, added the same way;
- **prompting**: the first concept text (cut to ``PRIME_TOKENS`` tokens) put before each prompt; one point.

Both vectors have unit norm and are added at every position times ``coeff * R``, where ``R`` is the mean norm of the
hook's activations on the texts without the concept, so a coefficient means the same push for both. Each generation
(greedy, from each of ``prompts``) is re-read by the unsteered model: **concept** is the probability a probe of the
concept gives it (a logistic regression on the hook's mean-pooled activations of the example texts), **loss** the
unsteered model's mean next-token loss on the generated tokens given the prompt alone (fluency: lower is better).

The trade-off is summed up by the area under each method's frontier: the best concept reached at a loss increase of at
most ``b``, averaged over ``b`` in ``[0, fluency_budget]`` (nats). The method with the larger area steers better; the
result says which one did, whichever it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from saekit.evals.probing import fit_logistic, pooled, top_latents

PROMPTS = ("The weather today", "My favourite thing is", "In the beginning", "Here is a story:")
COEFFS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PRIME_TOKENS = 48


def _pooled(lm, hook: str, texts: Sequence[str]) -> torch.Tensor:
    """Each text's mean activation at ``hook`` (BOS left out), ``[n, d_model]``."""
    return pooled(lm, None, hook, texts)[0]


@torch.no_grad()
def _read(lm, hook: str, prompt_ids: list[int], ids: list[int]) -> tuple[torch.Tensor, float]:
    """The unsteered model on a generation: its mean activation at ``hook`` and its mean loss (nats per token)."""
    full = torch.tensor([prompt_ids + ids], device=lm.device)
    seen: dict[str, torch.Tensor] = {}
    with lm.hooks({hook: lambda x: seen.__setitem__("x", x.detach())}):
        logits = lm.model(input_ids=full).logits.float()
    start = len(prompt_ids)
    logp = logits[0, start - 1:-1].log_softmax(-1)
    loss = -float(logp.gather(-1, torch.tensor(ids, device=logp.device)[:, None]).mean())
    return seen["x"][0, start:].float().mean(0).cpu(), loss


def frontier_area(points: Sequence[tuple[float, float]], baseline: tuple[float, float], budget: float) -> float:
    """The mean over loss increases ``b`` in ``[0, budget]`` of the best concept among ``points`` (loss, concept)
    whose loss exceeds the baseline's by at most ``b`` (the baseline itself counts at ``b`` = 0)."""
    base_loss, base_concept = baseline
    steps = sorted((max(0.0, loss - base_loss), concept) for loss, concept in points)
    steps = [(0.0, base_concept)] + [s for s in steps if s[0] <= budget]
    area, best = 0.0, base_concept
    for (x0, c0), (x1, _) in zip(steps, steps[1:] + [(budget, None)]):
        best = max(best, c0)
        area += best * (x1 - x0)
    return area / budget


def steering_evaluation(lm, sae, concept: Sequence[str], other: Sequence[str], *, feature: int | None = None,
                        prompts: Sequence[str] = PROMPTS, coeffs: Sequence[float] = COEFFS, max_new_tokens: int = 24,
                        fluency_budget: float = 1.0, seed: int = 0, input_hook: str, output_hook: str,
                        progress: Callable[[float], None] | None = None) -> dict:
    """``{"metrics": {...}, "details": {"curves": ..., "prompting": ..., "samples": ...}}`` (module docstring)."""
    acts = _pooled(lm, output_hook, [*concept, *other])
    y = torch.tensor([True] * len(concept) + [False] * len(other))
    probe = fit_logistic(acts, y, balanced=True)
    if feature is None:
        inputs = acts if input_hook == output_hook else _pooled(lm, input_hook, [*concept, *other])
        with torch.no_grad():
            codes = sae.encode(inputs.to(sae.device)).float().cpu()
        feature = int(top_latents(codes, y, 1)[0])
    diff = acts[y].mean(0) - acts[~y].mean(0)
    scale = float(_pooled(lm, output_hook, list(other)).norm(dim=1).mean())
    directions = {"sae": sae.W_dec.detach()[feature].float().cpu(), "diffmean": diff}
    directions = {m: v / v.norm().clamp_min(1e-12) for m, v in directions.items()}

    def presence(mean_activation: torch.Tensor) -> float:
        return float(torch.sigmoid(probe.logits(mean_activation[None]))[0])

    def run(vector: torch.Tensor | None, prefix: str = "") -> tuple[float, float, list[str]]:
        concepts, losses, texts = [], [], []
        for prompt in prompts:
            hooks = {} if vector is None else {output_hook: lambda x, v=vector: x + v.to(x.device, x.dtype)}
            with lm.hooks(hooks):
                out = lm.generate(prefix + prompt, max_new_tokens=max_new_tokens, seed=seed)
            prompt_ids = lm.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            if not out.ids:
                continue
            mean_activation, loss = _read(lm, output_hook, prompt_ids, list(out.ids))
            concepts.append(presence(mean_activation))
            losses.append(loss)
            texts.append(lm.tokenizer.decode(out.ids, skip_special_tokens=True))
        n = max(len(concepts), 1)
        return sum(losses) / n, sum(concepts) / n, texts

    steps = len(coeffs) * 2 + 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / steps)

    base_loss, base_concept, base_texts = run(None)
    curves: dict[str, list[dict]] = {m: [] for m in directions}
    samples = [{"method": "none", "coeff": 0.0, "texts": base_texts}]
    for method, unit in directions.items():
        for coeff in coeffs:
            if coeff == 0:
                loss, value, texts = base_loss, base_concept, base_texts
            else:
                loss, value, texts = run(unit * coeff * scale)
                samples.append({"method": method, "coeff": coeff, "texts": texts})
            curves[method].append({"coeff": float(coeff), "loss": loss, "concept": value})
            tick()
    primer = lm.tokenizer.decode(lm.tokenizer(concept[0], add_special_tokens=False)["input_ids"][:PRIME_TOKENS])
    p_loss, p_concept, p_texts = run(None, prefix=primer.strip() + "\n\n")
    samples.append({"method": "prompting", "coeff": None, "texts": p_texts})
    tick()
    metrics = {"feature": float(feature), "scale": scale, "baseline_concept": base_concept, "baseline_loss": base_loss,
               "prompting_concept": p_concept, "prompting_loss_increase": p_loss - base_loss}
    for method, rows in curves.items():
        area = frontier_area([(r["loss"], r["concept"]) for r in rows], (base_loss, base_concept), fluency_budget)
        metrics[f"{method}_area"] = area
        metrics[f"{method}_max_concept"] = max(r["concept"] for r in rows)
    winner = "sae" if metrics["sae_area"] > metrics["diffmean_area"] else "diffmean"
    return {"metrics": metrics,
            "details": {"curves": curves, "samples": samples, "feature": feature, "winner": winner,
                        "prompting": {"loss": p_loss, "concept": p_concept, "primer": primer},
                        "fluency_budget": fluency_budget},
            "warnings": [] if winner == "sae" else [
                f"DiffMean steered better than SAE feature {feature} (area {metrics['diffmean_area']:.3f} against "
                f"{metrics['sae_area']:.3f} within a loss increase of {fluency_budget:g} nats)"]}
