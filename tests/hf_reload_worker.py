"""Answer questions with an exported folder using plain transformers only (run as a subprocess).

``python tests/hf_reload_worker.py EXPORT_DIR QUESTIONS.json OUT.json``: each question is
``{"key", "messages"}`` (HF messages, list-of-parts content, image parts with a local ``path``).
For every question it writes the processor's prompt ids, its ``<image>`` token count, the greedy
answer of ``LlavaForConditionalGeneration.generate`` and that of ``pipeline("image-text-to-text")``.
It asserts that llava_wb was never imported: the folder must stand on its own.
"""

from __future__ import annotations

import json
import sys


def main(export_dir: str, questions_file: str, out_file: str, max_new_tokens: int = 8) -> None:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

    processor = AutoProcessor.from_pretrained(export_dir, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(export_dir, local_files_only=True).eval()
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    tokenizer = processor.tokenizer
    rows = []
    with open(questions_file) as f:
        questions = json.load(f)
    for q in questions:
        inputs = processor.apply_chat_template(
            q["messages"], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        piped = pipe(
            text=q["messages"],
            max_new_tokens=max_new_tokens,
            return_full_text=False,
            generate_kwargs={"do_sample": False},
        )
        ids = inputs["input_ids"][0].tolist()
        rows.append(
            {
                "key": q["key"],
                "ids": ids,
                "image_tokens": ids.count(model.config.image_token_id),
                "generate": tokenizer.decode(new, skip_special_tokens=True),
                "pipeline": piped[0]["generated_text"],
            }
        )
    assert "llava_wb" not in sys.modules, "the exported folder needed llava_wb"
    with open(out_file, "w") as f:
        json.dump(
            {
                "rows": rows,
                "processor": type(processor).__name__,
                "image_processor": type(processor.image_processor).__name__,
                "llava_wb_imported": "llava_wb" in sys.modules,
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
