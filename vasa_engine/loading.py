"""Building an engine's models from weights files: merging the files, checking every tensor, the seeded random
fallback (and the warning that says so), provenance, and writing a built set back in the engine format."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .config import RendererConfig
from .driving import MotionTemplate
from .errors import CheckpointError
from .models.motion_generator import MotionGeneratorConfig
from .models.renderer import FaceRenderer
from .weights import RANDOM_WEIGHTS_WARNING, component_state, load_state_checked, load_weights, save_weights, seeded

log = logging.getLogger("vasa_engine")

WeightsArg = str | os.PathLike | Sequence[str | os.PathLike] | None
MOTION_COMPONENTS = {"audio": "audio encoder", "motion_generator": "motion generator"}


@dataclass
class MotionStack:
    """What turns speech into motion: audio encoder (with its feature map), motion generator, motion template."""

    audio: torch.nn.Module
    generator: torch.nn.Module
    template: MotionTemplate


@dataclass
class WeightSet:
    """The tensors and components of one or more engine weights files, merged (a component in two files is an
    error), and which components were built from seeded random weights instead."""

    paths: list[str] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    components: dict[str, dict] = field(default_factory=dict)
    random_components: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, weights: WeightsArg) -> "WeightSet":
        paths = [] if weights is None else [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
        out = cls(paths=[os.fspath(p) for p in paths])
        for path in out.paths:
            tensors, doc = load_weights(path)
            for name, component in doc["components"].items():
                if name in out.components:
                    raise CheckpointError(f"component {name!r} is in two weights files: "
                                          f"{out.components[name]['path']} and {path}")
                out.components[name] = {**component, "path": path}
            out.tensors.update(tensors)
        return out

    def has(self, name: str) -> bool:
        return name in self.components

    def source(self, name: str) -> str:
        """Where a built component's weights came from (provenance written by `save`)."""
        return "seeded random weights" if name in self.random_components else self.components[name]["path"]

    def config(self, cls, name: str, data: dict | None = None):
        component = self.components[name]
        try:
            return cls.from_dict(component["config"] if data is None else data)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{name} config is invalid ({exc}): {component.get('path')}") from None

    def load(self, name: str, module: torch.nn.Module, prefix: str | None = None) -> torch.nn.Module:
        """Assign the component's tensors (under `prefix` within it) to a module built on the meta device."""
        state = component_state(self.tensors, name)
        if prefix is not None:
            state = component_state(state, prefix)
        what = f"{self.components[name]['path']}: {name}" + (f".{prefix}" if prefix else "")
        load_state_checked(module, state, what, assign=True)
        return module

    def renderer(self, config: RendererConfig | None, seed: int) -> FaceRenderer:
        """The face renderer from the weights, else at `config` (default: full size) on seeded random weights."""
        if self.has("renderer"):
            with torch.device("meta"):
                renderer = FaceRenderer(self.config(RendererConfig, "renderer"))
            for name, module in renderer.named_children():
                self.load("renderer", module, name)
            return renderer
        with seeded(seed):
            renderer = FaceRenderer(config or RendererConfig())
        self.random_components.append("renderer")
        log.warning("warning: %s", RANDOM_WEIGHTS_WARNING)
        return renderer

    def motion_stack(self, motion_config: MotionGeneratorConfig | None, audio_config, seed: int,
                     device: torch.device, dtype: torch.dtype) -> MotionStack:
        """Audio encoder, motion generator and template from the weights; what is missing on seeded random weights
        (audio_config / motion_config give their sizes; defaults: HuBERT base, VASA-1 size), with one warning."""
        from .audio_features import AudioFeatureEncoder
        from .models.audio_encoder import AudioEncoderConfig
        from .models.motion_generator import MotionGenerator

        missing = [n for n in MOTION_COMPONENTS if not self.has(n)]
        if self.has("motion_generator"):
            motion_cfg = self.config(MotionGeneratorConfig, "motion_generator")
            with torch.device("meta"):
                generator = self.load("motion_generator", MotionGenerator(motion_cfg))
        else:
            motion_cfg = motion_config or MotionGeneratorConfig()
            with seeded(seed + 1):
                generator = MotionGenerator(motion_cfg)
        if self.has("audio"):
            cfg = self.components["audio"].get("config", {})
            audio_cfg = self.config(AudioEncoderConfig, "audio", cfg.get("encoder"))
            with torch.device("meta"):
                audio = self.load("audio", AudioFeatureEncoder(audio_cfg, cfg.get("feature_dim")))
        else:
            with seeded(seed + 2):
                audio = AudioFeatureEncoder(audio_config or AudioEncoderConfig(), motion_cfg.feature_dim)
        if audio.feature_dim != motion_cfg.feature_dim:
            raise CheckpointError(f"audio features are {audio.feature_dim}-d but the motion generator takes "
                                  f"{motion_cfg.feature_dim}-d")
        template_state = component_state(self.tensors, "motion_template")
        template = MotionTemplate.from_tensors(template_state) if template_state else MotionTemplate.neutral()
        if missing:
            self.random_components += missing
            log.warning("warning: no weights for the %s: using seeded random weights, so the motion will not "
                        "follow the speech", " and ".join(MOTION_COMPONENTS[n] for n in missing))
        schedule = {k: v.float().clone() for k, v in generator.diffusion_sched.named_buffers()}
        for module in (audio, generator):
            module.eval().to(device, dtype)
        for name, value in schedule.items():  # the schedule stays exact fp32: a half-precision round trip breaks it
            setattr(generator.diffusion_sched, name, value.to(device))
        return MotionStack(audio, generator, template)

    def save(self, path: str | os.PathLike, renderer: FaceRenderer, stack: MotionStack | None) -> None:
        """Write the built components (and their configs and provenance) in the engine format."""
        def floats(prefix, module):
            return {f"{prefix}.{k}": v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}

        tensors = floats("renderer", renderer)
        components = {"renderer": {"config": renderer.cfg.to_dict(), "source": self.source("renderer")}}
        if stack is not None:
            tensors.update(floats("audio", stack.audio))
            tensors.update(floats("motion_generator", stack.generator))
            tensors.update({f"motion_template.{k}": v for k, v in stack.template.to_tensors().items()})
            components["audio"] = {"config": {"encoder": stack.audio.audio_encoder.cfg.to_dict(),
                                              "feature_dim": stack.audio.feature_dim}, "source": self.source("audio")}
            components["motion_generator"] = {"config": stack.generator.cfg.to_dict(),
                                              "source": self.source("motion_generator")}
            components["motion_template"] = {"source": "template"}
        save_weights(path, tensors, components)
