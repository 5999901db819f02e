"""lmms-eval model ``llava_wb``: any llava_wb run (reducers, video, audio) answers lmms-eval's requests.

Needs the ``lmms`` extra (``pip install -e .[lmms]``: lmms-eval 0.7.3); nothing else in llava_wb
imports this module. lmms-eval finds it through the ``lmms_eval.models`` entry point that
``pyproject.toml`` declares (:func:`llava_wb.eval.lmms_prompt.manifest`), so after installing::

    lmms-eval --model llava_wb --model_args pretrained=RUN_DIR[,batch_size=8,template=...,aspect=...] \\
        --tasks llava_wb_heldout --include_path TASK_DIR

(lmms-eval's own ``--batch_size`` and ``--device`` reach the adapter too.) ``pretrained``: a run folder (``final/`` is loaded; template and aspect come from its
``resolved_config.yaml``) or a bundle folder. Requests are turned into llava_wb prompts by
:mod:`llava_wb.eval.lmms_prompt` and answered by :func:`llava_wb.eval.evaluate.answer_batch`, the
evaluator's own batched greedy generation (``max_new_tokens`` from the task, default 8; ``until``
cuts the decoded answer). Only ``generate_until`` is served: log-likelihood and multi-round
requests raise ``NotImplementedError`` naming the request type.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..data.conversation import get_template
from .evaluate import answer_batch
from .lmms_prompt import build_prompt_item, cut_at_stops, load_run


class LlavaWbLMM(lmms):
    """A llava_wb model behind lmms-eval's simple-model interface."""

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 8,
        template: str | None = None,
        aspect: str | None = None,
        max_length: int | str = 512,
        max_new_tokens: int | str = 8,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(
                f"llava_wb: unknown model_args {sorted(kwargs)} (known: pretrained, batch_size, template, "
                "aspect, max_length, max_new_tokens, device)"
            )
        self.model, self.tokenizer, template_name, self.settings = load_run(
            pretrained, template=template, aspect=aspect
        )
        if device:
            self.model.to(device)
        self.template = get_template(template_name, self.tokenizer)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.max_new_tokens = int(max_new_tokens)

    def _item(self, request: Instance) -> dict[str, Any]:
        context, _, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        return build_prompt_item(
            context,
            [v for v in visuals or [] if v is not None],
            doc,
            template=self.template,
            media_tokens=self.model.media_tokens,
            settings=self.settings,
            max_length=self.max_length,
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        # One batch holds requests with the same generation kwargs, in request order.
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        bar = tqdm(total=len(requests), desc="llava_wb answering", disable=self.rank != 0)
        for indices in groups.values():
            gen = dict(requests[indices[0]].args[1])
            until = gen.pop("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen.pop("max_new_tokens", self.max_new_tokens))
            extra = {}
            if gen.get("do_sample") and float(gen.get("temperature", 0) or 0) > 0:
                extra = {k: gen[k] for k in ("do_sample", "temperature", "top_p") if gen.get(k) is not None}
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                items = [self._item(requests[i]) for i in chunk]
                for i, text in zip(
                    chunk, answer_batch(self.model, self.tokenizer, items, max_new_tokens=max_new, **extra)
                ):
                    answers[i] = cut_at_stops(text, until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
                bar.update(len(chunk))
        bar.close()
        return answers  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("llava_wb's lmms-eval adapter serves generate_until tasks only (no loglikelihood)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("llava_wb's lmms-eval adapter serves generate_until tasks only (no multi-round)")
