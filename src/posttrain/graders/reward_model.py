"""The reward-model grader: a sequence classifier with one output scores each
(prompt, answer) conversation; the score is that output, higher is better.

The conversation is the prompt's `messages` plus the answer (the response with
its think block stripped) as the assistant turn, rendered with the reward
model's own chat template (posttrain's `chatml` when it has none). Sequences
are padded on the right with the model's pad token, so padding never moves the
token the classifier reads (the last non-pad one) and a score does not depend
on the batch it was computed in.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

from posttrain.generation import split_reasoning
from posttrain.graders import Graded, Issue


class RewardModelGrader:
    def __init__(self, model_id: str, path: Path, *, batch_size: int, max_length: int = 4096):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from posttrain.templates import load_template

        self.id = f"reward_model:{model_id}"
        self.batch_size = batch_size
        self.max_length = max_length
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = load_template("chatml")
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype).to(self.device)
        self.model.eval()
        # The classifier reads the last token that is not the config's pad token:
        # the tokenizer pads with exactly that token (the config gets one when it has none).
        config = self.model.config
        if config.pad_token_id is None:
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            if self.tokenizer.pad_token is None:
                raise ValueError(f"{self.id}: the tokenizer has neither a pad nor an eos token to pad batches with")
            config.pad_token_id = self.tokenizer.pad_token_id
            config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        else:
            self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(config.pad_token_id)
        self.tokenizer.padding_side = "right"

    def encode(self, doc: dict, response: str) -> list[int]:
        """Token ids of the conversation a response is scored on, before truncation."""
        messages = doc.get("messages") or [{"role": "user", "content": doc["prompt"]}]
        conversation = [*messages, {"role": "assistant", "content": split_reasoning(response)[1]}]
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        # The template writes any special tokens itself; the tokenizer must not add them again.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def grade(self, docs: list[dict], responses: list[list[str]]) -> list[Graded]:
        if len(docs) != len(responses):
            raise ValueError(f"{len(docs)} docs but {len(responses)} response lists")
        items = [(i, j) for i, rs in enumerate(responses) for j in range(len(rs))]
        encoded = [self.encode(docs[i], responses[i][j]) for i, j in items]
        truncated = [len(ids) > self.max_length for ids in encoded]
        encoded = [ids[: self.max_length] for ids in encoded]
        scores = self._score(encoded)

        per_doc: list[list[float]] = [[0.0] * len(rs) for rs in responses]
        cut = [0] * len(docs)
        for (i, j), score, was_cut in zip(items, scores, truncated):
            per_doc[i][j] = score
            cut[i] += was_cut
        out = []
        for i, doc in enumerate(docs):
            detail = {"truncated": cut[i]} if cut[i] else {}
            bad = [(j, s) for j, s in enumerate(per_doc[i]) if not math.isfinite(s)]
            if bad:
                j, s = bad[0]
                example = f"key {doc.get('key')!r}: response {j} scored {s} ({len(bad)} of {len(per_doc[i])} responses non-finite)"
                out.append(Graded(None, [Issue("reward model returned a non-finite score", example)], detail))
            else:
                out.append(Graded(per_doc[i], [], detail))
        return out

    def _score(self, encoded: list[list[int]]) -> list[float]:
        """One score per sequence, in input order; batches of similar lengths waste less on padding."""
        import torch

        order = sorted(range(len(encoded)), key=lambda k: (len(encoded[k]), k))
        scores = [math.nan] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                padded = self.tokenizer.pad({"input_ids": [encoded[k] for k in batch]}, return_tensors="pt").to(self.device)
                logits = self.model(**padded).logits
                for k, value in zip(batch, logits[:, 0].float().cpu().tolist()):
                    scores[k] = value
        return scores

    def close(self) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
