"""Model configuration: plain dataclasses that round-trip through dicts.

One :class:`OVSAMConfig` describes a whole model: which open_clip backbone,
the SAM2CLIP neck, the CLIP2SAM recognition head and the SAM-style decoder.
Dimensions that follow from the CLIP backbone (its stage channels and its
joint embedding size) are left as ``None`` and filled in when the model is
built, so a config only has to name the backbone.

``to_dict`` / ``from_dict`` give plain Python containers (lists, not tuples),
which is what YAML files and checkpoint files store.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from ovsam_ros.model.value_checks import check_float, check_hint, check_int, shown

# Registered with open_clip at runtime by ``backbone.register_tiny_clip_configs``.
TINY_RN_CLIP = "ovsam-tiny-rn"
TINY_CONVNEXT_CLIP = "ovsam-tiny-convnext"
# The small CLIP of the bundled shapes-world model (trained by training/stage0.py).
SHAPES_CLIP = "ovsam-shapes-rn"

# Decoder output-token sets (see DecoderConfig).
OUTPUT_TOKEN_SETS = ("auto", "sam", "reference")

# Output stride of the SAM image embedding relative to the padded input image.
EMBEDDING_STRIDE = 16


@dataclass
class BackboneConfig:
    """Frozen open_clip CLIP model providing the four multi-scale taps.

    ``pretrained`` is a LOCAL weights file for that open_clip model (never a
    download tag); ``None`` means random init (tests, or weights that come
    from an ``ovsam_ros`` checkpoint). The input image size is
    :attr:`OVSAMConfig.image_size`, kept in one place on purpose.
    """

    model_name: str = "RN50x16"
    pretrained: Optional[str] = None
    # Activation of the CLIP towers. OpenAI's CLIP weights were trained with QuickGELU, and
    # open_clip builds plain GELU unless told otherwise (every text embedding then differs).
    # None: decide from the weights (see backbone.resolve_quick_gelu).
    quick_gelu: Optional[bool] = None


@dataclass
class SAM2CLIPConfig:
    """SAM2CLIP neck: CLIP stages -> SAM-compatible image embedding."""

    embed_dim: int = 1280
    depth: int = 5
    num_heads: int = 16
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: Tuple[int, ...] = (4,)
    out_chans: int = 256
    strides: Tuple[int, ...] = (4, 8, 16, 32)
    in_channels: Optional[Tuple[int, ...]] = None  # None: taken from the backbone


@dataclass
class CLIP2SAMConfig:
    """CLIP2SAM: FPN over the CLIP stages + RoIAlign + 1x1 conv -> region embedding.

    ``roi_level=None`` assigns each box to an FPN level by its size, like the
    reference (mmdet ``SingleRoIExtractor``, ``finest_scale`` 56); an int pins
    one level. ``label_weight`` scales the decoder's label-token embedding
    added to the RoI embedding (the reference multiplies it by 0).
    """

    fpn_channels: int = 256
    roi_size: int = 7
    roi_level: Optional[int] = None
    finest_scale: float = 56.0
    strides: Tuple[int, ...] = (4, 8, 16, 32)
    embed_dim: Optional[int] = None  # CLIP joint (text) dim; None: from the backbone
    label_weight: float = 0.0


@dataclass
class DecoderConfig:
    """SAM prompt encoder + mask decoder, plus OVSAM's label token.

    ``output_tokens``:
      * ``"auto"`` (default): ``"reference"`` as soon as a published
        clip2sam file (one mask token, no IoU head) is loaded into the
        decoder, ``"sam"`` otherwise. Published weights then give the
        published masks; a Meta SAM decoder keeps SAM's behaviour.
      * ``"sam"``: SAM's IoU token and 1 + ``num_multimask_outputs`` mask
        tokens (multimask output and IoU predictions available). With a
        fine-tuned reference decoder this changes every mask (the extra
        tokens take part in the transformer's token self-attention).
      * ``"reference"``: only mask token 0 and no IoU token, exactly the
        token set the published OVSAM decoder was trained with (single
        mask, IoU predictions are NaN).
    ``label_token``: prepend OVSAM's learned label token. The two-way
    transformer attends across all tokens, so this changes the masks
    slightly; switch it off for bit-exact SAM behaviour.
    """

    transformer_dim: int = 256
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    label_token: bool = True
    label_mlp_depth: int = 3
    output_tokens: str = "auto"


C = TypeVar("C")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(cls: Type[C], data: Dict[str, Any], where: str, section: str = "") -> C:
    """``cls`` from a mapping; ``where`` names the source in errors, ``section`` the dotted key
    prefix inside it (``decoder.``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {section.rstrip('.') or 'config'} must be a mapping; got {shown(data)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in {section.rstrip('.') or 'the config'}; "
                         f"known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name in _NESTED.get(cls, {}):
            value = _from_plain(_NESTED[cls][name], value, where, f"{section}{name}.")
        else:
            # One wording for every YAML key (value_checks): a string where a number belongs fails
            # here, naming the key, not later in the model code as a TypeError.
            try:
                value = check_hint(f"{section}{name}", value, hints[name])
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            if isinstance(value, list):
                value = tuple(value)  # YAML has no tuples; the dataclasses use them for immutable defaults
        kwargs[name] = value
    if section:
        return cls(**kwargs)
    try:  # OVSAMConfig.validate: ranges and consistency
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass
class OVSAMConfig:
    """Everything needed to build an :class:`~ovsam_ros.model.ovsam.OVSAM`."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sam2clip: SAM2CLIPConfig = field(default_factory=SAM2CLIPConfig)
    clip2sam: CLIP2SAMConfig = field(default_factory=CLIP2SAMConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    # -- derived sizes ----------------------------------------------------
    @property
    def embedding_size(self) -> int:
        """Side of the square SAM image embedding grid (64 for 1024 input)."""
        return self.image_size // EMBEDDING_STRIDE

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the grid)."""
        return 4 * self.embedding_size

    def validate(self) -> None:
        self._check_ranges()
        if self.image_size % (EMBEDDING_STRIDE * 2) != 0:
            # The stride-32 CLIP stage must tile the padded image exactly.
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.sam2clip.out_chans != self.decoder.transformer_dim:
            raise ValueError(
                "sam2clip.out_chans must equal decoder.transformer_dim "
                f"({self.sam2clip.out_chans} != {self.decoder.transformer_dim})"
            )
        if self.decoder.output_tokens not in OUTPUT_TOKEN_SETS:
            raise ValueError(
                f"decoder.output_tokens must be one of {OUTPUT_TOKEN_SETS}, got {self.decoder.output_tokens!r}"
            )
        if len(self.sam2clip.strides) != 4 or len(self.clip2sam.strides) != 4:
            raise ValueError("OVSAM uses exactly four CLIP stages (strides 4/8/16/32)")

    def _check_ranges(self) -> None:
        """Sizes are whole numbers >= 1 (a 0 or negative size builds an empty or broken model),
        scales finite and positive; each error names the key (value_checks wording)."""
        check_int("image_size", self.image_size, 32)
        s2c, c2s, dec = self.sam2clip, self.clip2sam, self.decoder
        for part, name, low in ((s2c, "embed_dim", 1), (s2c, "depth", 1), (s2c, "num_heads", 1),
                                (s2c, "window_size", 0), (s2c, "out_chans", 1), (c2s, "fpn_channels", 1),
                                (c2s, "roi_size", 1), (dec, "transformer_dim", 1), (dec, "depth", 1),
                                (dec, "mlp_dim", 1), (dec, "num_heads", 1), (dec, "num_multimask_outputs", 1),
                                (dec, "iou_head_depth", 1), (dec, "iou_head_hidden_dim", 1),
                                (dec, "mask_in_chans", 1), (dec, "label_mlp_depth", 1)):
            check_int(f"{_SECTION[type(part)]}.{name}", getattr(part, name), low)
        check_float("sam2clip.mlp_ratio", s2c.mlp_ratio, above=0.0)
        check_float("clip2sam.finest_scale", c2s.finest_scale, above=0.0)
        check_float("clip2sam.label_weight", c2s.label_weight)
        for i in s2c.global_attn_indexes:
            check_int("sam2clip.global_attn_indexes[]", i, 0, s2c.depth - 1)
        for key, values in (("sam2clip.strides", s2c.strides), ("clip2sam.strides", c2s.strides),
                            ("sam2clip.in_channels", s2c.in_channels or ())):
            for v in values:
                check_int(f"{key}[]", v, 1)
        if c2s.roi_level is not None:
            check_int("clip2sam.roi_level", c2s.roi_level, 0, len(c2s.strides) - 1)
        if c2s.embed_dim is not None:
            check_int("clip2sam.embed_dim", c2s.embed_dim, 1)

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "OVSAMConfig") -> "OVSAMConfig":
        """The config a plain mapping describes; ``where`` (a file, ``model.overrides``) starts every error."""
        return _from_plain(cls, data, where)

    # -- presets ----------------------------------------------------------
    @classmethod
    def rn50x16(cls, pretrained: Optional[str] = None) -> "OVSAMConfig":
        """The published OVSAM: open_clip RN50x16 + SAM ViT-H sized neck/decoder."""
        return cls(backbone=BackboneConfig("RN50x16", pretrained))

    @classmethod
    def convnext_large(cls, pretrained: Optional[str] = None) -> "OVSAMConfig":
        """open_clip ConvNeXt-L (320px) backbone; no published OVSAM weights."""
        return cls(backbone=BackboneConfig("convnext_large_d_320", pretrained))

    @classmethod
    def tiny(cls, backbone: str = "rn") -> "OVSAMConfig":
        """A few-hundred-kB model for tests and demos (random init only).

        ``backbone``: ``"rn"`` (tiny ModifiedResNet) or ``"convnext"``
        (timm ``convnext_atto``). Both keep a real CLIP text tower.
        """
        names = {"rn": TINY_RN_CLIP, "convnext": TINY_CONVNEXT_CLIP}
        if backbone not in names:
            raise ValueError(f"tiny backbone must be one of {sorted(names)}, got {backbone!r}")
        return cls(
            backbone=BackboneConfig(names[backbone], None),
            sam2clip=SAM2CLIPConfig(
                embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), out_chans=32
            ),
            clip2sam=CLIP2SAMConfig(fpn_channels=32, roi_size=7),
            decoder=DecoderConfig(
                transformer_dim=32,
                depth=2,
                mlp_dim=64,
                num_heads=2,
                iou_head_hidden_dim=32,
            ),
            image_size=256,
        )


_NESTED: Dict[type, Dict[str, type]] = {
    OVSAMConfig: {
        "backbone": BackboneConfig,
        "sam2clip": SAM2CLIPConfig,
        "clip2sam": CLIP2SAMConfig,
        "decoder": DecoderConfig,
    }
}

# Section names in error messages (OVSAMConfig._check_ranges).
_SECTION: Dict[type, str] = {SAM2CLIPConfig: "sam2clip", CLIP2SAMConfig: "clip2sam", DecoderConfig: "decoder"}
