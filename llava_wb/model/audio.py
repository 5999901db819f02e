"""Audio towers: an audio encoder whose frames are pooled to a fixed number of LLM tokens per clip.

``AudioTower`` wraps one transformers audio encoder (``self.model``) and maps log-mel features
``[N, n_mels, frames_in]`` to ``[N, tokens_per_clip, D]``: the encoder's output frames (Whisper:
50 per second) are average-pooled by ``pool = frames_per_second / tokens_per_second``. A clip is
always the encoder's whole input window (``seconds``): the data pipeline cuts or zero-pads audio
to it (``llava_wb.data.audio``), so every clip gives the same number of tokens, derived here in
``tokens_per_clip`` and checked by the model against its ``<audio>`` placeholders.

A new tower is a subclass registered in ``AUDIO_TOWERS`` (``whisper`` below). Towers build from a
config dict (``d_model``, ``encoder_layers``, ``max_source_positions``, ...) or from a local
checkpoint folder (``path``): a whole Whisper model (its decoder is ignored) or an encoder saved
with ``WhisperEncoder.save_pretrained``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from llava_wb.model.feature_cache import CachedTower
from llava_wb.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

AUDIO_TOWERS: Registry[type[AudioTower]] = Registry("audio tower")


class AudioTower(CachedTower, nn.Module):
    """Base class (see the module docstring)."""

    frames_per_second: ClassVar[float] = 50.0  # encoder output frames per second of audio
    # Whether a batch calls the tower or not depends on its samples, so the calls vary per rank
    # (ZeRO-3 needs the same module calls on every rank).
    calls_vary_per_rank: ClassVar[bool] = True

    def __init__(self, model: PreTrainedModel, tokens_per_second: float):
        super().__init__()
        self.model = model
        self.pool = self.pool_for(self.config, tokens_per_second)
        self.tokens_per_second = float(tokens_per_second)

    @classmethod
    def config_class(cls) -> type[PreTrainedConfig]:
        """The transformers config class of the encoder (read without building weights)."""
        raise NotImplementedError

    @classmethod
    def frames_of(cls, config: PreTrainedConfig) -> int:
        """Encoder output frames per clip for ``config``."""
        raise NotImplementedError

    @classmethod
    def pool_for(cls, config: PreTrainedConfig, tokens_per_second: float) -> int:
        """The pooling factor that takes the encoder's frames to ``tokens_per_second``."""
        pool = cls.frames_per_second / float(tokens_per_second)
        if abs(pool - round(pool)) > 1e-6 or round(pool) < 1:
            raise ValueError(
                f"audio tokens_per_second={tokens_per_second} must divide the encoder's "
                f"{cls.frames_per_second:g} frames per second (e.g. 50, 25, 12.5, 10, 5)"
            )
        frames = cls.frames_of(config)
        if frames % round(pool):
            raise ValueError(
                f"the audio tower's {frames} frames per clip are not a multiple of "
                f"the pooling factor {round(pool)} (tokens_per_second={tokens_per_second})"
            )
        return round(pool)

    @classmethod
    def clip_tokens(cls, config: PreTrainedConfig, tokens_per_second: float) -> int:
        """LLM tokens (= ``<audio>`` placeholder ids) per clip of this tower's window: derived only
        here (``llava_wb.model.tokens`` and ``tokens_per_clip`` call it)."""
        return cls.frames_of(config) // cls.pool_for(config, tokens_per_second)

    @property
    def config(self) -> PreTrainedConfig:
        return self.model.config

    @property
    def encoder_frames(self) -> int:
        """Encoder output frames per clip."""
        return self.frames_of(self.config)

    @property
    def input_frames(self) -> int:
        """Log-mel frames per clip the encoder takes (10 ms hop)."""
        raise NotImplementedError

    @property
    def n_mels(self) -> int:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def seconds(self) -> float:
        """Length of the audio window one clip covers."""
        return self.encoder_frames / self.frames_per_second

    @property
    def tokens_per_clip(self) -> int:
        """LLM tokens (= ``<audio>`` placeholder ids) per audio clip (``clip_tokens``)."""
        return self.clip_tokens(self.config, self.tokens_per_second)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, n_mels, input_frames]`` -> encoder frames ``[N, encoder_frames, D]``."""
        raise NotImplementedError

    def fixed_parameters(self) -> list[nn.Parameter]:
        """Parameters that never train, even when the tower does."""
        return []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_input(features)
        return self.cached(features, self.pooled)  # a frozen tower with a feature cache serves from it

    def prefetch(self, features: torch.Tensor) -> int:
        """Cache the output for ``features`` as ``forward`` would take them (``CachedTower``)."""
        self.check_input(features)
        return self.prefetch_with(features, self.pooled)

    def check_input(self, features: torch.Tensor) -> None:
        if features.dim() != 3 or tuple(features.shape[1:]) != (self.n_mels, self.input_frames):
            raise ValueError(
                f"audio features must be [N, {self.n_mels}, {self.input_frames}] "
                f"({self.seconds:g} s of log-mel frames), got {tuple(features.shape)}"
            )

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The pooled encoder output ``[N, tokens_per_clip, D]`` of ``features``, always computed."""
        weight = next(self.model.parameters())
        hidden = self.encode(features.to(weight.dtype))
        if self.pool > 1:
            hidden = nn.functional.avg_pool1d(hidden.transpose(1, 2), self.pool, self.pool).transpose(1, 2)
        return hidden


@AUDIO_TOWERS.register("whisper")
class WhisperAudioTower(AudioTower):
    """A Whisper encoder: 2x strided conv stem (100 mel frames/s -> 50 frames/s), sinusoidal positions."""

    @classmethod
    def from_config(cls, config: PreTrainedConfig | dict[str, Any], tokens_per_second: float) -> WhisperAudioTower:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if isinstance(config, dict):
            config = WhisperConfig(**config)
        if config.model_type != "whisper":
            raise ValueError(f"the whisper audio tower needs a whisper config, got model_type {config.model_type!r}")
        return cls(WhisperEncoder._from_config(config, attn_implementation="sdpa"), tokens_per_second)

    @classmethod
    def from_pretrained(
        cls, path: str, overrides: dict[str, Any] | None, tokens_per_second: float
    ) -> WhisperAudioTower:
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(path, local_files_only=True, **(overrides or {}))
        if "WhisperEncoder" in (config.architectures or []):
            encoder = WhisperEncoder.from_pretrained(path, config=config, local_files_only=True)
        else:
            encoder = WhisperModel.from_pretrained(path, config=config, local_files_only=True).get_encoder()
        return cls(encoder, tokens_per_second)

    @classmethod
    def config_class(cls) -> type[PreTrainedConfig]:
        from transformers import WhisperConfig

        return WhisperConfig

    @classmethod
    def frames_of(cls, config: PreTrainedConfig) -> int:
        return int(config.max_source_positions)

    @property
    def input_frames(self) -> int:
        return 2 * self.encoder_frames

    @property
    def n_mels(self) -> int:
        return int(self.model.config.num_mel_bins)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=features).last_hidden_state

    def fixed_parameters(self) -> list[nn.Parameter]:
        return [self.model.embed_positions.weight]  # sinusoids, frozen in Whisper too


def build_audio_tower(
    name: str,
    *,
    path: str | None = None,
    config: PreTrainedConfig | dict[str, Any] | None = None,
    tokens_per_second: float = 25.0,
) -> AudioTower:
    """Build the audio tower registered as ``name`` from a local ``path`` (``config`` = overrides) or a config."""
    cls = AUDIO_TOWERS.get(name)
    if path is not None:
        return cls.from_pretrained(path, config if isinstance(config, dict) else None, tokens_per_second)
    return cls.from_config(config if config is not None else {}, tokens_per_second)
