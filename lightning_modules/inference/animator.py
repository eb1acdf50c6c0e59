"""The portrait animator (`Animator`, what `task=animate` in lightning_modules/tasks/animate.py runs): a
still portrait becomes a talking video (Playmate's audio-driven portrait animation with emotion control,
rendered by the main paper's renderer).

1. The portrait is analysed with dubbing's front end (lightning_modules/tasks/dub.py `analyse_chunk`, the
   settings of the renderer's own shards): face detection, the square crop box, landmarks, and the 3DMM and
   appearance fit (`clip.fit_face`) of the single frame: identity, expression, pose, texture and light.
2. The motion DiT (`animate.motion`, lightning_modules/inference/motion_source.py `DiffusionMotion`)
generates the
   expression and head pose of every 25 fps frame of the speech for the portrait's identity, with the
   emotion asked for; the silence gate closes the mouth in silent stretches (`animate.silence`).
3. The head pose (`pose`):
   - `generated`: the DiT's pose, normalised per identity, put back around the portrait's own pose (the
     mean) with `animate.pose_scale` as the per-identity std (the training clips' typical per-clip
     pose std, conf/animate/default.yaml);
   - `still`: the portrait's own pose on every frame (expression only);
   - `source`: the pose of a driving video (`pose_video`, analysed with the same front end), relative to
     its own mean over the frames used, added to the portrait's pose; it is resampled onto the speech's
     25 fps frames, and a video shorter than the speech follows `animate.on_short_pose_video`
     (`pingpong` by default: forward then back, so the head never jumps; `loop`, `freeze`, or `error`).
4. Each frame's I_3D is rendered with the portrait's identity, texture and light and the frame's
   expression and pose, and the renderer (stage 2, 3 or 4) warps the portrait to it: the portrait crop is
   every one of its K references. The renderer also wants the mouth-masked target frame, whose pixels it
   keeps outside the mouth (RBFIN inpaints into it, stage 4 pastes into it), so that frame decides
   everything but the mouth:
   - `pose=still`: the portrait itself with its mouth masked (the region of the portrait's landmarks and
     of the frame's projected 3DMM landmarks): exactly the dubbing situation the renderer is trained in,
     the face outside the mouth stays the photograph's own pixels;
   - moving poses: the portrait is in the wrong place, so the stand-in is stage 2's own estimate of the
     whole frame, I_e* (the references warped onto this frame's I_3D by SFM and corrected by TMN,
     `RendererStage2.modulate`, which needs no target), masked where the frame's projected landmarks put
     the mouth; the renderer then re-makes the mouth from I_3D as in dubbing. The raw warp would skip
     TMN's texture correction, the portrait would pin the head to the photo.
5. The frames are encoded as H.264 at 25 fps with the speech muxed in, one frame per 640 samples, so the
   video lasts as long as the audio (to within a frame). `pose=still` with `animate.paste_still` pastes the
   crop back into the whole portrait through dubbing's feathered mask (clean: outside the mouth every
   pixel is the photo's own); moving poses give the face crop at the renderer's size (a moving head has no
   clean place in a still photo). A portrait | animated PNG goes beside the mp4 (`preview_frames`).

Bad inputs (a missing or unreadable image, an image without a face, unreadable audio, a bad driving
video) stop with the file and the reason before anything is written; a failure while writing leaves no
partial output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import face3d
from datamodules.media.audio import VIDEO_FPS
from datamodules.media.masks import mouth_mask
from datamodules.media.video import ClipRejected, FrameReader, Mp4Writer, load_speech, probe
from datamodules.shards import COEFF_SLICES
from lightning_modules.common.errors import AnimationError, ConfigurationError
from lightning_modules.inference.analysis import analyse_chunk, analysis_tools
from lightning_modules.inference.dubber import finished_mp4, output_plan, preview_indices, write_preview
from lightning_modules.inference.generators import SynergyDubber, build_dubber, renderer_inputs
from lightning_modules.inference.motion_source import speech_frames
from lightning_modules.inference.paste import paste_into_frame, paste_weights
from lightning_modules.inference.tracks import FaceTrack, Speech, float_images
from lightning_modules.motion.normalizer import pose_of as motion_pose

log = logging.getLogger(__name__)

POSE_MODES = ("generated", "source", "still")


SHORT_POSE_POLICIES = ("pingpong", "loop", "freeze", "error")


@dataclass
class Portrait:
    """The analysed photo: the whole image (H, W, 3) uint8 RGB, the square crop `box` (x0, y0, side) in
    its pixels, and the one-frame `track` (crop, landmarks, 3DMM fit, albedo)."""

    path: Path
    image: np.ndarray
    box: np.ndarray
    track: FaceTrack

    @property
    def coeffs(self) -> np.ndarray:
        return np.asarray(self.track.coeffs[0], np.float32)

    @property
    def pose(self) -> np.ndarray:
        """(6,): rotation angles then translation."""
        return pose_of(self.track.coeffs)[0]


def pose_of(coeffs: np.ndarray) -> np.ndarray:
    """(T, 257) -> (T, 6): angles then translation, as arrays (`motion.normalizer.pose_of`)."""
    return motion_pose(torch.from_numpy(np.asarray(coeffs, np.float32))).numpy()


def with_pose(coeffs: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(T, 257) coefficients with their angles and translation replaced by `pose` (T, 6)."""
    out = np.array(coeffs, np.float32, copy=True)
    angle = COEFF_SLICES["angle"]
    out[:, angle] = pose[:, : angle.stop - angle.start]
    out[:, COEFF_SLICES["trans"]] = pose[:, angle.stop - angle.start :]
    return out


def read_portrait(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file OpenCV reads (EXIF orientation applied, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise AnimationError(f"cannot animate {path}: missing: {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise AnimationError(f"cannot animate {path}: not_an_image: OpenCV cannot read it as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_speech(path: str | Path) -> np.ndarray:
    """The speech as 16 kHz mono float (`load_speech`), its problems as `AnimationError`s."""
    try:
        return load_speech(path)
    except ClipRejected as rejection:
        raise AnimationError(
            f"cannot use {path} as the speech: {rejection.reason}: {rejection.detail}"
        ) from None


def check_pose(pose: str, pose_video: str | Path | None) -> None:
    """`pose` is one of POSE_MODES; pose=source has a driving video that exists."""
    if pose not in POSE_MODES:
        raise ConfigurationError(f"pose={pose}: one of {POSE_MODES} expected")
    if pose == "source":
        if not pose_video:
            raise ConfigurationError("pose=source needs the driving video: pose_video=PATH")
        if not Path(pose_video).is_file():
            raise AnimationError(f"cannot use {pose_video} as the pose video: missing: it does not exist")
    elif pose_video:
        log.warning("pose_video=%s is read with pose=source only (pose=%s)", pose_video, pose)


def analyse_portrait(path: str | Path, tools: Any, options: Any, detect_max_side: int) -> Portrait:
    """The portrait through dubbing's front end as a one-frame video (module docstring, 1); its most
    prominent face when it shows several."""
    path = Path(path)
    image = read_portrait(path)
    # One frame: the shortest track there can be.
    settings = OmegaConf.create({"detect_max_side": detect_max_side, "min_track_frames": 1})
    tracks = analyse_chunk(image[None], np.zeros(1), tools, options, settings)
    if not tracks:
        raise AnimationError(f"cannot animate {path}: no_face: no face found in the image")
    return Portrait(path, image, tracks[0].box, tracks[0].track)


def driving_pose(
    path: str | Path,
    num_frames: int,
    tools: Any,
    options: Any,
    settings: DictConfig,
) -> np.ndarray:
    """(num_frames, 6) head pose of a driving video on the speech's 25 fps frames, relative to its own mean
    over them (module docstring, 3). `settings`: `animate` (on_short_pose_video, its tolerance, chunk size,
    the analysis settings). Frames without a face take the pose interpolated from their neighbours."""
    path = Path(path)
    try:
        info = probe(path, float(settings.vfr_tolerance))
    except ClipRejected as rejection:
        raise AnimationError(
            f"cannot use {path} as the pose video: {rejection.reason}: {rejection.detail}"
        ) from None
    policy = str(settings.on_short_pose_video)
    if policy not in SHORT_POSE_POLICIES:
        raise ConfigurationError(
            f"animate.on_short_pose_video must be one of {SHORT_POSE_POLICIES}, got {policy!r}"
        )
    count, fps = info.num_frames, info.fps
    poses = np.full((count, 6), np.nan, np.float32)
    reader = FrameReader(path, info)
    chunk = int(settings.chunk_frames)
    analysis = OmegaConf.create(
        {"detect_max_side": int(settings.detect_max_side), "min_track_frames": int(settings.min_track_frames)}
    )
    try:
        for start in range(0, count, chunk):
            frames = reader.read(start, min(start + chunk, count))
            times = np.arange(start, start + len(frames)) / fps
            for analysed in analyse_chunk(frames, times, tools, options, analysis):
                poses[start + analysed.start : start + analysed.end] = pose_of(analysed.track.coeffs)
    except ClipRejected as rejection:
        raise AnimationError(
            f"cannot use {path} as the pose video: {rejection.reason}: {rejection.detail}"
        ) from None
    finally:
        reader.close()
    known = np.flatnonzero(~np.isnan(poses[:, 0]))
    if len(known) == 0:
        raise AnimationError(
            f"cannot use {path} as the pose video: no face found in any of its {count} frames"
        )
    frames = np.arange(count)
    poses = np.stack([np.interp(frames, known, poses[known, k]) for k in range(6)], axis=1)
    speech_s = num_frames / VIDEO_FPS
    tolerance = float(settings.pose_video_tolerance_s)
    if policy == "error":
        if speech_s > count / fps + tolerance:
            raise AnimationError(
                f"cannot use {path} as the pose video: it lasts {count / fps:.2f} s, the speech "
                f"{speech_s:.2f} s (animate.on_short_pose_video=error; pingpong, loop or freeze extend it)"
            )
        plan = frames
    else:
        plan = output_plan(count, fps, speech_s, policy, tolerance)
    sequence = poses[plan]
    position = np.arange(num_frames) / VIDEO_FPS * fps  # in frames of the planned sequence
    steps = np.arange(len(plan))
    resampled = np.stack([np.interp(position, steps, sequence[:, k]) for k in range(6)], axis=1)
    return (resampled - resampled.mean(axis=0, keepdims=True)).astype(np.float32)


@dataclass
class Animation:
    """What an animation run made: its report (paths, frames, rate, durations, seconds per step) and the
    3DMM coefficients (T, 257) every frame's I_3D was rendered with."""

    report: dict[str, Any]
    coeffs: np.ndarray = field(repr=False)
    # (257,): the portrait's own fit (identity, expression, texture, light, pose).
    portrait_coeffs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))


class Animator:
    """Animates portraits with one renderer and motion DiT (module docstring); the analysis tools, the
    renderer and the DiT are built once. `settings`: the `animate` config."""

    def __init__(self, pipeline: DictConfig | dict, settings: DictConfig) -> None:
        self.settings = settings
        node = (
            OmegaConf.to_container(pipeline, resolve=True)
            if OmegaConf.is_config(pipeline)
            else dict(pipeline)
        )
        motion = OmegaConf.to_container(settings.motion, resolve=True)
        node.update(
            motion=motion,
            renderer_checkpoint=settings.renderer_checkpoint,
            silence=OmegaConf.to_container(settings.silence, resolve=True) if settings.silence else None,
            batch_size=int(settings.batch_size),
        )
        self.generator: SynergyDubber = build_dubber(node, str(settings.device))
        if not hasattr(self.generator.renderer, "modulate"):
            raise ConfigurationError(
                f"{settings.renderer_checkpoint} is not a renderer checkpoint (experiment=stage2, 3 or 4)"
            )
        self.motion = self.generator.motion
        self.tools, self.options = analysis_tools(self.generator.preprocess_config(), str(settings.device))
        scale = settings.pose_scale
        self.pose_scale = np.asarray([*scale.angle, *scale.trans], np.float32)
        if self.pose_scale.shape != (6,) or (self.pose_scale <= 0).any():
            raise ConfigurationError(
                f"animate.pose_scale needs 3 positive angle and 3 trans values, got {scale}"
            )

    # --- motion --------------------------------------------------------------------------------------

    def coefficients(
        self, portrait: Portrait, speech: Speech, pose: str, pose_video: str | Path | None = None
    ) -> np.ndarray:
        """(T, 257) coefficients of every 25 fps frame of the speech: the portrait's identity, texture and
        light, the generated expression (silence-gated), the pose of `pose` (module docstring, 2-3)."""
        num_frames = speech_frames(speech)
        motion = self.motion.generate(speech, portrait.coeffs[COEFF_SLICES["id"]], num_frames)
        expression = self.generator.gate(
            self.motion.expression_of(motion), speech, np.arange(num_frames) / VIDEO_FPS
        )
        own = np.repeat(portrait.pose[None], num_frames, axis=0)
        if pose == "generated":
            head = self.motion.decode_pose(motion, portrait.pose, self.pose_scale)
        elif pose == "still":
            head = own
        else:
            offsets = driving_pose(pose_video, num_frames, self.tools, self.options, self.settings)
            head = own + offsets
        coeffs = np.repeat(portrait.coeffs[None], num_frames, axis=0)
        coeffs[:, COEFF_SLICES["exp"]] = expression
        return with_pose(coeffs, head)

    # --- rendering -----------------------------------------------------------------------------------

    @torch.no_grad()
    def render(
        self, portrait: Portrait, coeffs: np.ndarray, still: bool
    ) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        """Yields, per batch of frames, the renderer's crops (n, 3, S', S') in [0, 1], their mouth masks
        (n, S', S') and the frames' projected landmarks (n, 68, 2) in pixels of S' (module docstring, 4)."""
        generator = self.generator
        renderer_module, device = generator.renderer, generator.device
        size = generator.image_size
        camera = generator.camera.resized(size)
        renderer = face3d.FaceRenderer(generator.face_model, camera)
        k = generator.num_references
        track = portrait.track
        albedo = None if track.albedo is None else torch.from_numpy(track.albedo).float().to(device)[None]
        own = torch.from_numpy(track.coeffs).float().to(device)
        reference = float_images(track.crops, size, device)  # (1, 3, S', S')
        reference_render = renderer(own, albedo=face3d.clip_albedo(albedo, 1))["image"].clamp(0, 1)
        own_landmarks = track.landmarks[0] * (size / track.crops.shape[1])
        own_mask = mouth_mask(size, size, own_landmarks, generator.mask_mode, generator.mask_dilation)
        for start in range(0, len(coeffs), generator.batch_size):
            part = torch.from_numpy(coeffs[start : start + generator.batch_size]).float().to(device)
            n = len(part)
            landmarks = generator.face_model.landmarks_2d(part, camera).float()
            batch = renderer_inputs(
                renderer,
                part,
                albedo,
                reference.expand(k, -1, -1, -1),
                own.expand(k, -1),
                reference_render.expand(k, -1, -1, -1),
                landmarks,
            )
            points = landmarks.cpu().numpy()
            masks = np.stack(
                [mouth_mask(size, size, p, generator.mask_mode, generator.mask_dilation) for p in points]
            )
            if still:
                masks |= own_mask[None]
                base = reference.expand(n, -1, -1, -1)
            else:
                batch["modulated"] = renderer_module.modulate(batch)
                base = batch["modulated"][1]["image"].float().clamp(0, 1)
            mask = torch.from_numpy(masks[:, None].astype(np.float32)).to(device)
            batch.update(target=base, masked=base * (1 - mask), mouth_mask=mask)
            out = renderer_module.generate(batch)
            images = renderer_module.final_image(batch, out).clamp(0, 1).float().cpu()
            yield images, masks, points

    # --- one portrait --------------------------------------------------------------------------------

    def animate(
        self,
        image: str | Path,
        audio: str | Path,
        output: str | Path,
        pose: str = "generated",
        pose_video: str | Path | None = None,
    ) -> Animation:
        """One portrait and speech into `output` (module docstring)."""
        settings = self.settings
        image, audio, output = Path(image), Path(audio), Path(output)
        check_pose(pose, pose_video)
        seconds = dict.fromkeys(("analysis", "motion", "render", "encode"), 0.0)
        tick = time.perf_counter()
        speech = Speech.from_wave(read_speech(audio))
        portrait = analyse_portrait(image, self.tools, self.options, int(settings.detect_max_side))
        seconds["analysis"] = time.perf_counter() - tick
        tick = time.perf_counter()
        coeffs = self.coefficients(portrait, speech, pose, pose_video)
        seconds["motion"] = time.perf_counter() - tick

        still = pose == "still"
        paste = still and bool(settings.paste_still)
        size = self.generator.image_size
        height, width = (portrait.image.shape[0], portrait.image.shape[1]) if paste else (size, size)
        height, width = height - height % 2, width - width % 2
        writer = Mp4Writer(
            output,
            width,
            height,
            fps=VIDEO_FPS,
            crf=int(settings.encoder.crf),
            preset=str(settings.encoder.preset),
        )
        shown = preview_indices(len(coeffs), int(settings.preview_frames))
        source = portrait.image if paste else portrait.track.crops[0]
        if not paste and source.shape[0] != size:
            source = cv2.resize(source, (size, size), interpolation=cv2.INTER_AREA)
        previews: list[tuple[np.ndarray, np.ndarray]] = []
        scale = size / portrait.track.crops.shape[1]
        bar = _progress_bar(len(coeffs), bool(settings.progress))
        batches = self.render(portrait, coeffs, still)
        index = 0
        try:
            with finished_mp4(writer, speech.wave, seconds):
                while True:
                    tick = time.perf_counter()
                    rendered = next(batches, None)
                    seconds["render"] += time.perf_counter() - tick
                    if rendered is None:
                        break
                    tick = time.perf_counter()
                    images, masks, points = rendered
                    for crop, mask, landmarks in zip(images.permute(0, 2, 3, 1).numpy(), masks, points):
                        if paste:
                            weights = paste_weights(
                                mask.astype(np.float32),
                                [portrait.track.landmarks[0] * scale, landmarks],
                                float(settings.feather),
                            )
                            frame = paste_into_frame(portrait.image, crop, weights, portrait.box)
                        else:
                            frame = np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8)
                        if index in shown:
                            previews.append((source, frame))
                        writer.write(frame[:height, :width])
                        index += 1
                    seconds["encode"] += time.perf_counter() - tick
                    if bar is not None:
                        bar.update(len(images))
        finally:
            if bar is not None:
                bar.close()
        if previews:
            write_preview(output.with_suffix(".png"), previews)
        report = {
            "image": str(image),
            "audio": str(audio),
            "output": str(output),
            "pose": pose,
            "pose_video": str(pose_video) if pose == "source" else None,
            "emotion": self.motion.emotion_name,
            "level": self.motion.level,
            "fps": float(VIDEO_FPS),
            "frames": len(coeffs),
            "size": [width, height],
            "duration_s": len(coeffs) / VIDEO_FPS,
            "audio_s": speech.duration_s,
            "seconds": {key: round(value, 3) for key, value in seconds.items()},
        }
        log.info("animated %s with %s -> %s (%d frames, pose %s)", image, audio, output, len(coeffs), pose)
        return Animation(report, coeffs, portrait.coeffs)


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar counting frames, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="animating")
