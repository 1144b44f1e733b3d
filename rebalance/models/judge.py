"""A causal language model as a Yes/No judge (REAL's LLM filter of caption matches).

Any ``transformers`` causal LM by hub name or local path; on CUDA in float16 when present. The
answer is read from the next-token logits of " Yes" and " No": P(yes) = softmax over those two.
"""

from __future__ import annotations

import numpy as np

from rebalance.core import worker_cache
from rebalance.core.device import resolve_device
from rebalance.errors import RebalanceError

PROMPT = (
    "Does the following text mention a {concept} ({definition})?\n"
    'Text: "{caption}"\n'
    "Answer Yes or No.\nAnswer:"
)


class YesNoJudge:
    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise RebalanceError(
                f"cannot load the language model {model!r}: {error}. Pass a local path or a name in the local Hugging Face cache"
            ) from None
        # Offline, a tokenizer can come back nearly empty without an error: check it can spell the answers.
        yes = self.tokenizer.encode(" Yes", add_special_tokens=False)
        no = self.tokenizer.encode(" No", add_special_tokens=False)
        if not yes or not no or yes[0] == no[0] or len(self.tokenizer) < 10:
            raise RebalanceError(
                f"the tokenizer of {model!r} cannot tell ' Yes' from ' No' (vocabulary of {len(self.tokenizer)}); is it complete?"
            )
        self.answer_ids = [yes[0], no[0]]
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.batch_size = batch_size

    def yes_probability(self, prompts: list[str]) -> np.ndarray:
        """P(" Yes") / (P(" Yes") + P(" No")) as the next token of each prompt."""
        import torch

        results = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = self.tokenizer(
                    prompts[start : start + self.batch_size], return_tensors="pt", padding=True
                ).to(self.device)
                logits = self.model(**batch).logits[:, -1, self.answer_ids].float()
                results.append(torch.softmax(logits, dim=-1)[:, 0].cpu().numpy())
        return np.concatenate(results) if results else np.zeros(0)


def load_judge(model: str, device: str = "auto") -> YesNoJudge:
    """The judge, kept loaded in this process (``rebalance.core.worker_cache``)."""
    return worker_cache.kept(("judge", model, device), lambda: YesNoJudge(model, device=device))
