"""How a class is named in text prompts."""

from __future__ import annotations

from rebalance.domain.artifacts import ConceptFrequency, LabeledDataset
from rebalance.domain.text import readable

# CLIP's prompt ensemble, shortened (Radford et al., 2021): averaging a few templates is steadier
# than any one of them.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of one {}.",
)


def class_prompt_names(dataset: LabeledDataset, frequency: ConceptFrequency | None) -> list[str]:
    # REAL-Prompt: name a class in prompts by its most frequent synonym in pretraining captions.
    top = {}
    if frequency is not None and "top_synonym" in frequency.table.column_names:
        top = dict(
            zip(
                frequency.table["concept"].to_pylist(),
                frequency.table["top_synonym"].to_pylist(),
                strict=True,
            )
        )
    return [top.get(name) or readable(name) for name in dataset.class_names()]
