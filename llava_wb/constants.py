"""Constants shared by the data pipeline and the model; this module imports nothing.

The data side writes what the model side reads (label padding, media kinds, normalisation
defaults), so both take these from here instead of one importing the other.
"""

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding, media placeholders)
MEDIA_KINDS: tuple[str, ...] = ("image", "video", "audio")
PLACEHOLDERS: dict[str, str] = {kind: f"<{kind}>" for kind in MEDIA_KINDS}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
