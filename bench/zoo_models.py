"""The real-world bench zoo: architectures nobody here wrote, exported to ONNX.

Every model is built from its library's own config with seeded random weights (no
downloads are possible here) and exported the way that library's users export it:
timm and torchvision models and transformers models with ``torch.onnx.export``
(opset 17, the TorchScript exporter), ultralytics models with their own
``model.export(format="onnx")``. Parameters a library initialises to a constant
(zero biases, unit norms, 1e-5 layer scales, zero-initialised last BN in a residual
branch) and BatchNorm statistics are re-drawn, so that every branch contributes and a
wrong lowering shows in the outputs.

This script needs the bench-only venv (``make bench-venv``: torch 2.14.1,
torchvision 0.29.1, timm, transformers, ultralytics, pnnx, mconv); the test venv does
not have those libraries. Each model is exported in its own process into
``bench/.zoo/<name>/`` (``model.onnx``, ``inputs.npz`` with seeded sample inputs,
``meta.json``); existing exports are kept.

Usage: .venv-bench/bin/python bench/zoo_models.py [--only a,b] [--family timm] [--list] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mconv  # noqa: F401  (first: it turns off onnxruntime's and OpenVINO's telemetry, here and in children)

ZOO = Path(__file__).resolve().parent / ".zoo"
OPSET = 17


@dataclass(frozen=True)
class Entry:
    """One zoo model: a name, its family and how to build it."""

    name: str
    family: str  # timm | torchvision | transformers | ultralytics
    kind: str  # what the model is, for the table
    build: str  # builder key, see BUILDERS
    arg: str  # the library's model name or config
    shape: tuple[int, ...] = (1, 3, 224, 224)
    options: dict = field(default_factory=dict)


def _timm(name: str, kind: str, shape=(1, 3, 224, 224), **options) -> Entry:
    return Entry(name, "timm", kind, "timm", name, shape, options)


CATALOG: list[Entry] = [
    # --- timm: CNNs (plain, residual, SE, depthwise, re-parameterised) ---
    _timm("resnet18", "CNN"),
    _timm("resnet50", "CNN"),
    _timm("resnext26ts", "CNN grouped"),
    _timm("resnest14d", "CNN split-attention"),
    _timm("seresnet33ts", "CNN SE"),
    _timm("regnety_002", "CNN SE"),
    _timm("regnetz_b16", "CNN SE"),
    _timm("efficientnet_b0", "mobile SE"),
    _timm("mobilenetv2_100", "mobile"),
    _timm("mobilenetv3_large_100", "mobile SE hardswish"),
    _timm("mobilenetv3_small_100", "mobile SE hardswish"),
    _timm("mobilenetv4_conv_small", "mobile"),
    _timm("mobilenetv4_hybrid_medium", "mobile hybrid attention"),
    _timm("ghostnet_100", "mobile ghost"),
    _timm("ghostnetv2_100", "mobile ghost attention"),
    _timm("rexnet_100", "mobile SE"),
    _timm("lcnet_050", "mobile SE"),
    _timm("mnasnet_100", "mobile"),
    _timm("tinynet_a", "mobile SE"),
    _timm("hgnetv2_b0", "CNN"),
    _timm("repvit_m1", "mobile re-param"),
    _timm("mobileone_s0", "mobile re-param"),
    _timm("fastvit_t8", "hybrid re-param", (1, 3, 256, 256)),
    _timm("efficientvit_b0", "hybrid linear attention"),
    _timm("efficientvit_m0", "hybrid cascaded attention"),
    _timm("densenet121", "CNN dense"),
    _timm("dla34", "CNN aggregation"),
    _timm("hrnet_w18_small", "CNN multi-resolution"),
    _timm("cspresnet50", "CNN CSP"),
    _timm("ese_vovnet19b_dw", "CNN eSE"),
    _timm("dpn68", "CNN dual path"),
    _timm("gernet_s", "CNN"),
    _timm("selecsls42b", "CNN"),
    _timm("starnet_s1", "CNN star"),
    _timm("nfnet_l0", "CNN normalizer-free"),
    # --- timm: ConvNeXt family and MetaFormers ---
    _timm("convnext_atto", "ConvNeXt"),
    _timm("convnextv2_atto", "ConvNeXt GRN"),
    _timm("edgenext_xx_small", "hybrid"),
    _timm("inception_next_atto", "MetaFormer"),
    _timm("poolformer_s12", "MetaFormer pooling"),
    _timm("poolformerv2_s12", "MetaFormer pooling"),
    _timm("convformer_s18", "MetaFormer conv"),
    _timm("caformer_s18", "MetaFormer attention"),
    _timm("efficientformer_l1", "MetaFormer hybrid"),
    _timm("efficientformerv2_s0", "MetaFormer hybrid"),
    # --- timm: MLPs ---
    _timm("mixer_s16_224", "MLP-Mixer"),
    _timm("mixer_b16_224", "MLP-Mixer"),
    _timm("resmlp_12_224", "MLP"),
    _timm("gmlp_s16_224", "MLP gated"),
    # --- timm: vision transformers and hybrids ---
    _timm("deit_tiny_patch16_224", "ViT"),
    _timm("vit_small_patch16_224", "ViT"),
    _timm("cait_xxs24_224", "ViT class-attention"),
    _timm("xcit_nano_12_p16_224", "ViT cross-covariance"),
    _timm("deit3_small_patch16_224", "ViT layer-scale"),
    _timm("swin_tiny_patch4_window7_224", "Swin"),
    _timm("pvt_v2_b0", "pyramid ViT"),
    _timm("twins_svt_small", "pyramid ViT"),
    _timm("crossvit_9_240", "ViT two-branch", (1, 3, 240, 240)),
    _timm("levit_128s", "hybrid ViT"),
    _timm("tiny_vit_5m_224", "hybrid ViT"),
    _timm("maxvit_nano_rw_256", "hybrid ViT grid", (1, 3, 256, 256)),
    _timm("coatnet_nano_rw_224", "hybrid ViT"),
    _timm("mobilevit_xxs", "mobile ViT", (1, 3, 256, 256)),
    _timm("mobilevitv2_050", "mobile ViT", (1, 3, 256, 256)),
    _timm("visformer_tiny", "hybrid ViT"),
    # --- round 2 (stop 26): families the first round did not cover ---
    _timm("tf_efficientnetv2_b0", "mobile SE fused-MBConv"),
    _timm("regnetx_002", "CNN grouped"),
    _timm("res2net50_26w_4s", "CNN multi-scale"),
    _timm("skresnet18", "CNN selective kernel"),
    _timm("cs3darknet_s", "CNN CSP darknet"),
    _timm("xception41", "CNN separable", (1, 3, 299, 299)),
    _timm("inception_v3", "CNN inception", (1, 3, 299, 299)),
    _timm("tresnet_m", "CNN space-to-depth"),
    _timm("fbnetv3_b", "mobile NAS SE"),
    _timm("repghostnet_100", "mobile re-param ghost"),
    _timm("fasternet_t0", "mobile partial conv"),
    _timm("shvit_s1", "mobile single-head attention"),
    _timm("mambaout_femto", "MetaFormer gated conv"),
    _timm("sequencer2d_s", "BiLSTM mixer"),
    _timm("lambda_resnet26t", "CNN lambda layers", (1, 3, 256, 256)),
    _timm("botnet26t_256", "CNN bottleneck attention", (1, 3, 256, 256)),
    _timm("halonet26t", "CNN halo attention", (1, 3, 256, 256), dynamo=True),  # TorchScript export fails
    _timm("convit_tiny", "ViT gated positional attention"),
    _timm("pit_ti_224", "ViT pooling"),
    _timm("eva02_tiny_patch14_224", "ViT rotary SwiGLU", dynamo=True),  # TorchScript export fails
    _timm("vit_small_patch14_reg4_dinov2", "ViT registers (DINOv2)", img_size=224),
    _timm("volo_d1_224", "ViT outlook attention", dynamo=True),  # Col2Im: TorchScript export fails
    _timm("davit_tiny", "ViT dual attention"),
    _timm("focalnet_tiny_srf", "focal modulation"),
    _timm("gcvit_xxtiny", "ViT global context"),
    _timm("mvitv2_tiny", "ViT multiscale pooling attention"),
    _timm("nextvit_small", "hybrid ViT"),
    _timm("hiera_tiny_224", "hierarchical ViT (mask unit)"),
    # the dynamo exporter (torch 2.14's default for torch.onnx.export): other op patterns, opset 18
    Entry("resnet50_dynamo", "timm", "CNN, dynamo export", "timm", "resnet50", options={"dynamo": True}),
    Entry(
        "mobilenetv3_dynamo",
        "timm",
        "mobile SE, dynamo export",
        "timm",
        "mobilenetv3_large_100",
        options={"dynamo": True},
    ),
    Entry("vit_small_dynamo", "timm", "ViT, dynamo export", "timm", "vit_small_patch16_224", options={"dynamo": True}),
    Entry("convnext_dynamo", "timm", "ConvNeXt, dynamo export", "timm", "convnext_atto", options={"dynamo": True}),
    # --- torchvision ---
    Entry("tv_shufflenet_v2_x1_0", "torchvision", "mobile shuffle", "tv", "shufflenet_v2_x1_0"),
    Entry("tv_squeezenet1_1", "torchvision", "CNN", "tv", "squeezenet1_1"),
    Entry("tv_googlenet", "torchvision", "CNN inception", "tv", "googlenet"),
    Entry("tv_vit_b_16", "torchvision", "ViT", "tv", "vit_b_16"),
    Entry("tv_swin_t", "torchvision", "Swin", "tv", "swin_t"),
    Entry(
        "tv_deeplabv3_mobilenet_v3_large",
        "torchvision",
        "segmentation",
        "tv_seg",
        "deeplabv3_mobilenet_v3_large",
        (1, 3, 256, 256),
    ),
    Entry(
        "tv_lraspp_mobilenet_v3_large",
        "torchvision",
        "segmentation",
        "tv_seg",
        "lraspp_mobilenet_v3_large",
        (1, 3, 256, 256),
    ),
    # --- transformers (from configs) ---
    Entry("hf_bert", "transformers", "text encoder + mask", "hf_text", "bert", (1, 128)),
    Entry("hf_distilbert", "transformers", "text encoder + mask", "hf_text", "distilbert", (1, 128)),
    Entry("hf_roberta", "transformers", "text encoder + mask", "hf_text", "roberta", (1, 128)),
    Entry("hf_electra", "transformers", "text encoder + mask", "hf_text", "electra", (1, 128)),
    Entry("hf_t5_encoder", "transformers", "text encoder + mask", "hf_text", "t5", (1, 64)),
    Entry("hf_gpt2", "transformers", "decoder, no cache", "hf_text", "gpt2", (1, 64)),
    Entry("hf_whisper_encoder", "transformers", "audio encoder", "hf_audio", "whisper", (1, 80, 3000)),
    Entry("hf_vit", "transformers", "ViT", "hf_vision", "vit"),
    Entry("hf_clip_vision", "transformers", "ViT (CLIP)", "hf_vision", "clip"),
    Entry("hf_segformer_b0", "transformers", "segmentation", "hf_vision", "segformer", (1, 3, 256, 256)),
    Entry("hf_llama", "transformers", "decoder RMSNorm rotary", "hf_text", "llama", (1, 64), {"dynamo": True}),
    Entry("hf_qwen2", "transformers", "decoder GQA rotary", "hf_text", "qwen2", (1, 64), {"dynamo": True}),
    Entry(
        "hf_bert_dynamo",
        "transformers",
        "text encoder + mask, dynamo export",
        "hf_text",
        "bert",
        (1, 128),
        {"dynamo": True},
    ),
    Entry("hf_mobilebert", "transformers", "text encoder + mask", "hf_text", "mobilebert", (1, 128)),
    Entry("hf_albert", "transformers", "text encoder + mask", "hf_text", "albert", (1, 128)),
    Entry("hf_deberta_v2", "transformers", "text encoder relative", "hf_text", "deberta_v2", (1, 128)),
    Entry("hf_wav2vec2", "transformers", "audio encoder (raw wave)", "hf_audio", "wav2vec2", (1, 16000)),
    Entry("hf_dinov2", "transformers", "ViT (DINOv2)", "hf_vision", "dinov2"),
    Entry("hf_siglip_vision", "transformers", "ViT (SigLIP)", "hf_vision", "siglip"),
    # --- ultralytics (their own export) ---
    Entry("yolov8n", "ultralytics", "detect", "yolo", "yolov8n.yaml", (1, 3, 640, 640)),
    Entry("yolov8n_seg", "ultralytics", "segment", "yolo", "yolov8n-seg.yaml", (1, 3, 640, 640)),
    Entry("yolov8n_pose", "ultralytics", "pose", "yolo", "yolov8n-pose.yaml", (1, 3, 640, 640)),
    Entry("yolo11n", "ultralytics", "detect", "yolo", "yolo11n.yaml", (1, 3, 640, 640)),
    Entry("yolo11n_seg", "ultralytics", "segment", "yolo", "yolo11n-seg.yaml", (1, 3, 640, 640)),
    Entry("yolo11n_pose", "ultralytics", "pose", "yolo", "yolo11n-pose.yaml", (1, 3, 640, 640)),
    Entry("yolo11n_obb", "ultralytics", "oriented boxes", "yolo", "yolo11n-obb.yaml", (1, 3, 640, 640)),
    Entry("yolo11n_cls", "ultralytics", "classify", "yolo", "yolo11n-cls.yaml", (1, 3, 224, 224)),
    Entry("yolov10n", "ultralytics", "detect, NMS-free (TopK)", "yolo", "yolov10n.yaml", (1, 3, 640, 640)),
    Entry("yolo26n", "ultralytics", "detect, NMS-free", "yolo", "yolo26n.yaml", (1, 3, 640, 640)),
    Entry("yolo26n_seg", "ultralytics", "segment, NMS-free", "yolo", "yolo26n-seg.yaml", (1, 3, 640, 640)),
    Entry("yolo26n_pose", "ultralytics", "pose, NMS-free", "yolo", "yolo26n-pose.yaml", (1, 3, 640, 640)),
    Entry("yolo12n", "ultralytics", "detect, area attention", "yolo", "yolo12n.yaml", (1, 3, 640, 640)),
    Entry("yolov5nu", "ultralytics", "detect", "yolo", "yolov5nu.yaml", (1, 3, 640, 640)),
    Entry("yolov9t", "ultralytics", "detect", "yolo", "yolov9t.yaml", (1, 3, 640, 640)),
    Entry("yolov6n", "ultralytics", "detect", "yolo", "yolov6n.yaml", (1, 3, 640, 640)),
    Entry("yolov3_tinyu", "ultralytics", "detect", "yolo", "yolov3-tinyu.yaml", (1, 3, 640, 640)),
    Entry("rtdetr_l", "ultralytics", "detect, DETR (TopK)", "rtdetr", "rtdetr-l.yaml", (1, 3, 640, 640)),
]

BY_NAME = {e.name: e for e in CATALOG}


# ----------------------------------------------------------------------------- weights


def randomize(model, seed: int = 1) -> None:
    """Re-draw constant-initialised parameters and BatchNorm statistics (seeded).

    A freshly built model has zero biases, unit norm weights, 1e-5 layer scales and
    zero-initialised residual branches: through those a wrong lowering can hide.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() == 0 or not bool((flat == flat[0]).all()):
                continue
            if p.ndim == 1 or "scale" in name or "gamma" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75 if float(flat[0]) != 0 or "weight" in name
                        else torch.randn(p.shape, generator=g) * 0.05)  # fmt: skip
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)


# ----------------------------------------------------------------------------- builders


_EXPORT_OPTIONS = {"opset", "dynamo"}  # Entry.options read by _export; the rest go to the model's constructor


def _model_options(e: Entry) -> dict:
    return {k: v for k, v in e.options.items() if k not in _EXPORT_OPTIONS}


def _export(module, args: tuple, names: list[str], path: Path, outputs: list[str] | None, e: Entry) -> None:
    """TorchScript exporter at opset 17 unless the entry asks for another opset or for the dynamo
    exporter (torch 2.14's default, what a user calling ``torch.onnx.export`` without options gets)."""
    import torch

    opset, dynamo = e.options.get("opset", OPSET), bool(e.options.get("dynamo", False))
    extra = {} if dynamo else {"do_constant_folding": True}
    torch.onnx.export(module, args, str(path), opset_version=opset, dynamo=dynamo, input_names=names,
                      output_names=outputs, **extra)  # fmt: skip
    if dynamo:  # the dynamo exporter may keep weights in a side file: fold them in, one file per model
        import onnx

        onnx.save(onnx.load(str(path)), str(path))
        for side in path.parent.glob(path.name + ".data"):
            side.unlink()


def build_timm(e: Entry, out: Path) -> dict:
    import timm
    import torch

    m = timm.create_model(e.arg, pretrained=False, **_model_options(e)).eval()
    randomize(m)
    x = torch.randn(e.shape, generator=torch.Generator().manual_seed(0))
    _export(m, (x,), ["input"], out / "model.onnx", ["output"], e)
    return {"input": x.numpy()}


def build_tv(e: Entry, out: Path) -> dict:
    import torch
    import torchvision

    extra = {"weights_backbone": None} if e.build == "tv_seg" else {}
    m = torchvision.models.get_model(e.arg, weights=None, **extra).eval()
    randomize(m)
    x = torch.randn(e.shape, generator=torch.Generator().manual_seed(0))
    if e.build == "tv_seg":

        class Out(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["out"]

        m = Out(m).eval()
    _export(m, (x,), ["input"], out / "model.onnx", ["output"], e)
    return {"input": x.numpy()}


def _hf_text_model(arch: str):
    import transformers as tf

    if arch == "bert":
        return tf.BertModel(tf.BertConfig()), True
    if arch == "distilbert":
        return tf.DistilBertModel(tf.DistilBertConfig()), True
    if arch == "roberta":
        cfg = tf.RobertaConfig(num_hidden_layers=6)
        return tf.RobertaModel(cfg), True
    if arch == "electra":
        return tf.ElectraModel(tf.ElectraConfig()), True  # electra-small-like defaults
    if arch == "t5":
        cfg = tf.T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8)
        return tf.T5EncoderModel(cfg), True
    if arch == "gpt2":
        return tf.GPT2Model(tf.GPT2Config(n_layer=4)), False
    if arch == "llama":  # a small Llama: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention
        cfg = tf.LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=4, vocab_size=32000)  # fmt: skip
        return tf.LlamaModel(cfg), False
    if arch == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, vocab_size=32000)  # fmt: skip
        return tf.Qwen2Model(cfg), False
    if arch == "mobilebert":
        return tf.MobileBertModel(tf.MobileBertConfig()), True
    if arch == "albert":
        return tf.AlbertModel(tf.AlbertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072)), True
    if arch == "deberta_v2":  # deberta-v3-small-like
        cfg = tf.DebertaV2Config(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
                                 relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
                                 max_relative_positions=-1, position_biased_input=False, norm_rel_ebd="layer_norm",
                                 share_att_key=True, vocab_size=32000)  # fmt: skip
        return tf.DebertaV2Model(cfg), True
    raise ValueError(arch)


def build_hf_text(e: Entry, out: Path) -> dict:
    import numpy as np
    import torch

    torch.manual_seed(0)
    model, with_mask = _hf_text_model(e.arg)
    model.eval()
    randomize(model)
    seq = e.shape[1]
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    ids = torch.from_numpy(rng.integers(3, min(vocab, 30000), e.shape).astype(np.int64))
    feeds = {"input_ids": ids.numpy()}

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    w = Wrap(model).eval()
    if with_mask:
        mask = np.ones(e.shape, np.int64)
        mask[:, seq - seq // 4 :] = 0  # a padded batch: the last quarter is padding
        feeds["attention_mask"] = mask
        _export(w, (ids, torch.from_numpy(mask)), ["input_ids", "attention_mask"], out / "model.onnx", ["output"], e)
    else:
        _export(w, (ids,), ["input_ids"], out / "model.onnx", ["output"], e)
    return feeds


def build_hf_audio(e: Entry, out: Path) -> dict:
    """An audio encoder's last hidden state: Whisper (log-mel features) or wav2vec2 (raw wave)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if e.arg == "whisper":  # whisper-tiny
        cfg = tf.WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                               decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536)  # fmt: skip
        model, name = tf.WhisperModel(cfg).get_encoder(), "input_features"
    elif e.arg == "wav2vec2":
        cfg = tf.Wav2Vec2Config(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536)
        model, name = tf.Wav2Vec2Model(cfg), "input_values"
    else:
        raise ValueError(e.arg)
    model.eval()
    randomize(model)

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).last_hidden_state

    x = torch.randn(e.shape, generator=torch.Generator().manual_seed(0))
    _export(Wrap(model).eval(), (x,), [name], out / "model.onnx", ["output"], e)
    return {name: x.numpy()}


def build_hf_vision(e: Entry, out: Path) -> dict:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if e.arg == "vit":
        model, pick = tf.ViTModel(tf.ViTConfig()), "last_hidden_state"
    elif e.arg == "clip":
        model, pick = tf.CLIPVisionModel(tf.CLIPVisionConfig()), "pooler_output"
    elif e.arg == "dinov2":
        cfg = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224)
        model, pick = tf.Dinov2Model(cfg), "last_hidden_state"
    elif e.arg == "siglip":
        cfg = tf.SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                                    num_attention_heads=6, image_size=224, patch_size=16)  # fmt: skip
        model, pick = tf.SiglipVisionModel(cfg), "pooler_output"
    elif e.arg == "segformer":
        model, pick = tf.SegformerForSemanticSegmentation(tf.SegformerConfig()), "logits"
    else:
        raise ValueError(e.arg)
    model.eval()
    randomize(model)

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return getattr(self.inner(pixel_values=pixel_values), pick)

    x = torch.randn(e.shape, generator=torch.Generator().manual_seed(0))
    _export(Wrap(model).eval(), (x,), ["pixel_values"], out / "model.onnx", ["output"], e)
    return {"pixel_values": x.numpy()}


def build_yolo(e: Entry, out: Path) -> dict:
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        # Its settings file (with analytics "sync" on by default) goes here, not ~/.config.
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tmp) / "config"))
        from ultralytics import RTDETR, YOLO

        torch.manual_seed(0)
        wrapper = (RTDETR if e.build == "rtdetr" else YOLO)(e.arg)
        randomize(wrapper.model)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            path = Path(wrapper.export(format="onnx", imgsz=e.shape[-1], opset=OPSET)).resolve()
        finally:
            os.chdir(cwd)
        shutil.move(str(path), out / "model.onnx")
    x = np.random.default_rng(0).random(e.shape, dtype=np.float32)  # images in [0, 1], as YOLO takes them
    return {"images": x}


BUILDERS = {
    "timm": build_timm,
    "tv": build_tv,
    "tv_seg": build_tv,
    "hf_text": build_hf_text,
    "hf_audio": build_hf_audio,
    "hf_vision": build_hf_vision,
    "yolo": build_yolo,
    "rtdetr": build_yolo,
}


# ----------------------------------------------------------------------------- driver


def export_one(name: str) -> int:
    """Child mode: export ``name`` into ZOO/name (written to a temporary folder, then renamed)."""
    import numpy as np
    import onnx

    e = BY_NAME[name]
    final = ZOO / name
    tmp = ZOO / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    feeds = BUILDERS[e.build](e, tmp)
    model = onnx.load(str(tmp / "model.onnx"), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feeds = {k: v for k, v in feeds.items() if k in names}
    np.savez(tmp / "inputs.npz", **feeds)
    meta = {"name": e.name, "family": e.family, "kind": e.kind, "arg": e.arg, "export_s": time.perf_counter() - t0,
            "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in feeds.items()},
            "outputs": [o.name for o in model.graph.output], "nodes": len(model.graph.node)}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--family", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return export_one(args.child)
    entries = [e for e in CATALOG if (not args.only or e.name in args.only.split(","))
               and (not args.family or e.family == args.family)]  # fmt: skip
    if args.list:
        for e in entries:
            print(f"{e.name:<34} {e.family:<13} {e.kind}")
        print(f"{len(entries)} models")
        return 0
    ZOO.mkdir(exist_ok=True)
    failed = []
    for e in entries:
        if (ZOO / e.name / "meta.json").is_file() and not args.force:
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", e.name], capture_output=True, text=True,
                                  timeout=args.timeout)  # fmt: skip
            ok, err = proc.returncode == 0, (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            ok, err = False, [f"timed out after {args.timeout:.0f} s"]
        print(f"{'ok ' if ok else 'FAIL'} {e.name:<34} {time.perf_counter() - t0:6.1f} s {'' if ok else err}",
              flush=True)  # fmt: skip
        if not ok:
            failed.append(e.name)
    tail = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"{len(entries) - len(failed)}/{len(entries)} exported{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
