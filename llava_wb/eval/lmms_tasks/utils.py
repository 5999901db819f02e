"""Document hooks of the ``llava_wb_heldout`` lmms-eval task (loaded by lmms-eval from this folder).

A document is one question of a held-out sample (``python -m llava_wb.eval.lmms_task``): its media
paths in placeholder order, the conversation up to the question (``llava_wb_conversation``, read by
the llava_wb model adapter), the reference ``answer`` and the question type ``qtype``.
"""

from PIL import Image

from llava_wb.eval.metrics import normalize


def doc_to_visual(doc):
    """Images as PIL (lmms-eval's convention; opened lazily from their file), video/audio as paths."""
    return [Image.open(m["path"]) if m["modality"] == "image" else m["path"] for m in doc["media"]]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    """Exact match overall and under the document's own ``acc_<qtype>``."""
    correct = float(normalize(results[0]) == normalize(doc["answer"]))
    return {"exact_match": correct, f"acc_{doc['qtype']}": correct}
