"""Attention pictures during training (`train.attention_png_every`), drawn as the authors do:
from the micro-batch being trained, inside the train workers.

Where they are drawn, and why: in the workers, on the micro-batch each rank has just trained,
rather than on the driver from a checkpoint's export. A worker holds the model and a micro-batch
with its images and SD targets, so a picture costs one no-grad forward; the driver would need a
checkpoint at every picture step, a second copy of the model (11B parameters, on the driver)
and SD targets for probe records (an SD pipeline on the driver), and the probe code of
`lavender_ray.eval` sits above `train` in the layers.

    samples = probe_batch(module, batch, cfg.loss.matching, step)   # on every rank, same step

Every rank calls `probe_batch` at the same step (`pictures_due`): under ZeRO-3 the forward
gathers parameters from every rank, as a training forward does, and the Aligner runs exactly once
per rank. Rank 0 then writes and logs its samples (`trackers.RunTracker.pictures`). The words are
the label's words matched to the SD words (`loss.matching`), so a picture shows the same words
whatever the model predicts; the panels are `eval.attention`'s: SD | VLM (raw attention, mean over
layers and heads, min-max normalised) | aligned.

Shapes::

    n  matched words of a sample    L  captured layers    H  heads    s  map side
"""

from __future__ import annotations

import torch

from lavender_ray.config import TrainConfig
from lavender_ray.pictures import ProbeSample
from lavender_ray.tensors import minmax_normalise
from lavender_ray.train.step import LavenderModule, TrainBatch, aligned_word_maps, aligner_anchor
from lavender_ray.words import Matching, select_words

PANELS = ("SD", "VLM", "aligned")  # the panels of `eval.attention.probe_attention`


def pictures_due(step: int, train: TrainConfig) -> bool:
    """Whether the micro-batch that completes optimizer step `step` is drawn."""
    every = train.attention_png_every
    return every > 0 and step % every == 0


@torch.no_grad()
def probe_batch(
    module: LavenderModule, batch: TrainBatch, matching: Matching, step: int
) -> list[ProbeSample]:
    """The SD, raw VLM and aligned maps of the label words of every sample of `batch` (on the
    engine's device, inputs in its dtype) that has a matched word, with the module in eval mode
    (no dropout; batch norm on its running statistics). Every rank must call it at the same step.
    """
    was_training = module.training
    module.eval()
    try:
        out = module.adapter.forward(batch.inputs, module.map_size)
        matched = select_words(
            batch.inputs["labels"], None, batch.sd_words, module.adapter.tokenizer,
            source="label", matching=matching,
        )
        rows = [[word.rows for word in words] for words in matched]
        if not any(rows):
            aligner_anchor(module.aligner, out.captured)  # ZeRO: the Aligner runs on every rank
            return []
        aligned = aligned_word_maps(module.aligner, out.captured, rows)  # [all words, s, s]
    finally:
        module.train(was_training)
    samples, first = [], 0
    for i, words in enumerate(matched):
        if not words or i >= len(batch.images):
            first += len(words)
            continue
        raw = out.captured.word_maps(i, rows[i])  # [n, L, H, s, s]
        vlm = minmax_normalise(raw.float().mean(dim=(1, 2)))  # [n, L, H, s, s] -> [n, s, s]
        sd = batch.sd_maps[i][[word.sd_index for word in words]]  # [n, s, s]
        maps = (sd, vlm, aligned[first : first + len(words)])
        first += len(words)
        samples.append(
            ProbeSample(
                record_id=f"sample_{i}",
                image=batch.images[i],
                text=f"step {step}, SD words: {' '.join(batch.sd_words[i])}",
                words=[word.sd_key for word in words],
                maps={name: m.float().cpu().numpy() for name, m in zip(PANELS, maps)},
            )
        )
    return samples
