"""Video and audio encoding for ``LlavaWBForCausalLM`` (a mixin), and the frame separators.

Video: the ``T`` frames of every clip of the batch go through the vision tower in one batched call
(``[N_vid * T, 3, S, S]``); the patch features are laid out as one ``(T, H, W)`` raster grid per clip
and cut by the video reducer (always after the tower, even when the image reducer merges inside it;
spatio-temporal windows, e.g. ``local_merge`` or ``avgpool`` 2x2x2,
whose output keeps ascending (t, h, w) order), then projected. With ``separators`` on, one learned
embedding follows each *time slice* of the output: a slice is the ``st`` frames one temporal window
of the reducer spans (``st = 1`` for ``identity``), and a token belongs to the slice of its
position's frame. Tokens are grouped by slice with a stable sort (a no-op for order-preserving
reducers) and every separator lands right after its slice's tokens, however many the reducer kept
there, with one scatter: token ``i`` of slice ``s`` moves to ``i + s`` and separator ``s`` to
``(tokens in slices <= s) + s``. So ``tokens_per_video = reducer.output_len((T, H, W)) + slices``.

Audio: log-mel features ``[N_aud, n_mels, frames]`` through the audio tower (pooled to
``tokens_per_second``) and the audio projector: ``tokens_per_audio = audio_tower.tokens_per_clip``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from llava_wb.data.config import AudioConfig, DataConfig, ImageConfig, MediaSettings
from llava_wb.model.tokens import time_slices, video_tokens


def insert_separators(
    tokens: torch.Tensor, slice_of: torch.Tensor, num_slices: int, separator: torch.Tensor
) -> torch.Tensor:
    """``tokens [N, M, D]`` with ``slice_of [N, M]`` (each token's time slice) -> ``[N, M + S, D]``
    grouped by slice, ``separator [D]`` after each of the ``S = num_slices`` slices."""
    n, m, d = tokens.shape
    order = torch.sort(slice_of, dim=1, stable=True)
    tokens = tokens.gather(1, order.indices.unsqueeze(-1).expand(n, m, d))
    slices = order.values
    out = tokens.new_zeros(n, m + num_slices, d)
    token_index = torch.arange(m, device=tokens.device).expand(n, m) + slices
    counts = torch.zeros(n, num_slices, dtype=torch.long, device=tokens.device).scatter_add_(
        1, slices, torch.ones_like(slices)
    )
    sep_index = counts.cumsum(1) + torch.arange(num_slices, device=tokens.device)
    out = out.scatter(1, token_index.unsqueeze(-1).expand(n, m, d), tokens)
    return out.scatter(
        1, sep_index.unsqueeze(-1).expand(n, num_slices, d), separator.to(out.dtype).expand(n, num_slices, d)
    )


class MediaMixin:
    """Video and audio paths of ``LlavaWBForCausalLM`` (needs ``vision_tower``, ``video_reducer``,
    ``projector``, ``frame_separator``, ``audio_tower``, ``audio_projector`` and ``config``)."""

    # ---- video ---------------------------------------------------------------------------------
    @property
    def video_grid(self) -> tuple[int, int, int]:
        return (int(self.config.video_frames), *self.vision_tower.grid)

    @property
    def video_slices(self) -> int:
        return time_slices(self.video_grid[0], self.video_reducer)[1] if self.config.video_separators else 0

    @property
    def tokens_per_video(self) -> int:
        """LLM tokens (= ``<video>`` placeholder ids) per clip (``llava_wb.model.tokens.video_tokens``)."""
        t, h, w = self.video_grid
        return video_tokens(t, (h, w), self.video_reducer, bool(self.config.video_separators))

    def encode_videos(self, video_values: torch.Tensor, instruction: dict[str, Any] | None = None) -> torch.Tensor:
        """``video_values [N, T, 3, S, S]`` -> LLM embeddings ``[N, tokens_per_video, D_llm]``
        (``instruction``: per clip, for an instruction-aware reducer)."""
        t, h, w = self.video_grid
        if video_values.dim() != 5 or video_values.shape[1] != t:
            raise ValueError(
                f"video_values must be [N, {t}, 3, S, S] (model.video.frames = {t}), got {tuple(video_values.shape)}"
            )
        n = video_values.shape[0]
        k = self.vision_tower.num_prefix_tokens
        features = self.vision_tower(video_values.flatten(0, 1))[:, k:]  # patches only: [N*T, H*W, D]
        context = self.reducer_context(self.video_reducer, instruction)
        reduced = self.video_reducer(features.reshape(n, t * h * w, -1), grid=(t, h, w), **context)
        weight = next(self.projector.parameters())
        embeds = self.projector(reduced.tokens.to(weight.dtype))
        if self.config.video_separators:
            st, slices = time_slices(t, self.video_reducer)
            sep = self.frame_separator(torch.zeros(1, dtype=torch.long, device=embeds.device))[0]
            embeds = insert_separators(embeds, reduced.positions // (h * w) // st, slices, sep)
        if embeds.shape[1] != self.tokens_per_video:
            raise RuntimeError(
                f"encoded {embeds.shape[1]} tokens per video, tokens_per_video is {self.tokens_per_video}"
            )
        return embeds

    def prefetch_media(self, batch: dict[str, Any]) -> int:
        """Run the frozen towers on a normalised batch's images, clip frames and audio clips into their
        feature caches, passing them exactly as ``forward`` will (``train.feature_prefetch``: the next
        batch, in a background thread). Images a reducer merges inside the tower are left out (that
        path never reads the cache). Returns the inputs computed."""
        done = 0
        pixels = batch.get("pixel_values")
        if pixels is not None and pixels.shape[0] and self.reducer.placement != "tower":
            done += self.vision_tower.prefetch(pixels)
        video = batch.get("video_values")
        if video is not None and video.shape[0]:
            done += self.vision_tower.prefetch(video.flatten(0, 1))
        audio = batch.get("audio_values")
        if audio is not None and audio.shape[0] and self.audio_tower is not None:
            done += self.audio_tower.prefetch(audio)
        return done

    # ---- instructions --------------------------------------------------------------------------
    @staticmethod
    def item_instruction(
        text: torch.Tensor, mask: torch.Tensor | None, per_sample: torch.Tensor
    ) -> dict[str, Any] | None:
        """Each media item's instruction: its sample's text embeddings ``[N_items, L, D]`` and
        ``instruction_mask`` rows; ``per_sample``: items per sample (from the placeholders, so it is
        right even without ``{kind}_counts``). None without a mask (an older pipeline)."""
        if mask is None:
            return None
        sample = torch.repeat_interleave(torch.arange(text.shape[0], device=text.device), per_sample.to(text.device))
        return {"query": text[sample], "query_mask": mask.to(text.device)[sample].bool()}

    def reducer_context(self, reducer: nn.Module, instruction: dict[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for ``reducer``: the instruction and the projector for
        ``needs_instruction`` reducers, nothing for the others."""
        if not reducer.needs_instruction:
            return {}
        return {**(instruction or {}), "project": self.projector}

    # ---- audio ---------------------------------------------------------------------------------
    @property
    def tokens_per_audio(self) -> int:
        """LLM tokens (= ``<audio>`` placeholder ids) per clip (0 without an audio tower)."""
        return self.audio_tower.tokens_per_clip if self.audio_tower is not None else 0

    def encode_audios(self, audio_values: torch.Tensor) -> torch.Tensor:
        """``audio_values [N, n_mels, frames]`` -> LLM embeddings ``[N, tokens_per_audio, D_llm]``."""
        if self.audio_tower is None:
            raise ValueError("the batch has audio but the model has no audio tower (set model.audio)")
        hidden = self.audio_tower(audio_values)
        weight = next(self.audio_projector.parameters())
        return self.audio_projector(hidden.to(weight.dtype))

    # ---- all media -----------------------------------------------------------------------------
    @property
    def media_tokens(self) -> dict[str, int]:
        """Placeholder ids per item of each modality the model reads (the data pipeline's input)."""
        tokens = {"image": self.tokens_per_image, "video": self.tokens_per_video}
        if self.audio_tower is not None:
            tokens["audio"] = self.tokens_per_audio
        return tokens

    def blank_media_term(self, present: set[str], device: torch.device) -> torch.Tensor:
        """Zero-weighted outputs of the encoders the batch does not use (training only): DDP then
        sees every trainable parameter used, and under ZeRO-3 every rank gathers the same modules."""
        size = self.vision_tower.image_size
        term = torch.zeros((), device=device)
        if "image" not in present:  # the tower, the image reducer (size embedding, scorer) and the projector
            term = term + self.encode_images(torch.zeros(1, 3, size, size, device=device)).embeds.sum()
        if "video" not in present and self.config.video_separators:
            term = term + self.frame_separator(torch.zeros(1, dtype=torch.long, device=device)).sum()
        if "video" not in present and any(p.requires_grad for p in self.video_reducer.parameters()):
            t, h, w = self.video_grid  # a separate video reducer with parameters (no tower call needed)
            feats = torch.zeros(1, t * h * w, self.vision_tower.hidden_size, device=device)
            term = (
                term
                + self.video_reducer(
                    feats, grid=(t, h, w), **self.reducer_context(self.video_reducer, None)
                ).tokens.sum()
            )
        if "audio" not in present and self.audio_tower is not None:
            tower = self.audio_tower
            term = term + self.encode_audios(torch.zeros(1, tower.n_mels, tower.input_frames, device=device)).sum()
        return 0.0 * term


def media_settings(model: Any, data: DataConfig | ImageConfig | MediaSettings) -> MediaSettings:
    """The decoding settings for ``model``: ``data``'s, with the frames per clip and the audio window
    filled in from the model (the only source of those counts) and checked when ``data`` sets them."""
    if isinstance(data, ImageConfig):
        data = MediaSettings(image=data)
    elif isinstance(data, DataConfig):
        data = data.media
    frames = int(model.config.video_frames)
    if data.video.num_frames not in (None, frames):
        raise ValueError(
            f"data.video.num_frames={data.video.num_frames} but the model reads {frames} frames per "
            "clip (model.video.frames); leave data.video.num_frames unset"
        )
    video = dataclasses.replace(data.video, num_frames=frames)
    tower = getattr(model, "audio_tower", None)
    audio = data.audio if tower is None else audio_settings(tower, data.audio)
    return MediaSettings(image=data.image, video=video, audio=audio)


def audio_settings(tower: Any, audio: AudioConfig) -> AudioConfig:
    """``audio`` with the window of ``tower`` filled in (checked when ``audio`` sets it) and its mel bins checked."""
    if audio.seconds not in (None, tower.seconds):
        raise ValueError(
            f"data.audio.seconds={audio.seconds} but the audio tower hears {tower.seconds:g} s "
            "per clip (max_source_positions / 50); leave data.audio.seconds unset"
        )
    if audio.n_mels != tower.n_mels:
        raise ValueError(f"data.audio.n_mels={audio.n_mels} but the audio tower takes {tower.n_mels} mel bins")
    return dataclasses.replace(audio, seconds=tower.seconds)
