"""How well a pilot labels recorded frames: accuracy, confusion per label, and a contact sheet."""

from __future__ import annotations

import numpy as np

from .training import open_sessions


def picked_frames(sessions, positions: np.ndarray) -> np.ndarray:
    """The raw frames at sorted ``positions`` of the sessions' frames stacked in order (as ``load_frames``
    stacks them), read one chunk at a time so only the picked frames stay in memory."""
    picked, offset = [], 0
    for session in sessions:
        for chunk in session.iter_chunks():
            local = positions[(positions >= offset) & (positions < offset + len(chunk.frames))] - offset
            picked.extend(chunk.frames[local])
            offset += len(chunk.frames)
    return np.stack(picked)


def check_pilot(pilot, sessions, sheet_path=None, thumbnails: int = 40, seed: int = 0) -> dict:
    """Accuracy and confusion per label of a pilot on sessions, and a contact sheet of predictions."""
    from ..digits.metrics import confusion_matrix, per_class_report
    from .pilot import model_inputs
    from .sessions.reader import load_frames

    opened = open_sessions(sessions)
    frames = load_frames(opened, pilot.preprocess)
    X = model_inputs(pilot, frames.features, frames.groups)
    names = list(frames.label_names)
    if names != pilot.labels:
        raise ValueError(f"the sessions' labels {names} differ from the pilot's {pilot.labels}")
    predicted = pilot.model.predict(X)
    confusion = confusion_matrix(frames.labels, predicted, len(names))
    result = {"frames": int(len(predicted)), "accuracy": float(np.mean(predicted == frames.labels)),
              "labels": names, "confusion": confusion.tolist(),
              "per_label": [{**row, "label": names[row["class"]]} for row in per_class_report(confusion)]}
    if sheet_path:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(predicted), size=min(thumbnails, len(predicted)), replace=False))
        raw_frames = picked_frames(opened, pick)
        contact_sheet(raw_frames, [names[i] for i in frames.labels[pick]], [names[i] for i in predicted[pick]],
                      sheet_path)
        result["contact_sheet"] = str(sheet_path)
    return result


def contact_sheet(frames: np.ndarray, truth: list[str], predicted: list[str], path, columns: int = 8,
                  scale: int = 2) -> None:
    """A grid of frames captioned 'true / predicted' (green when they agree, red otherwise)."""
    from PIL import Image, ImageDraw

    h, w = frames.shape[1:3]
    cell_w, cell_h = w * scale, h * scale + 14
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame if frame.ndim == 3 else np.stack([frame] * 3, axis=-1))
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        sheet.paste(image.resize((cell_w, h * scale), Image.NEAREST), (x, y))
        ok = truth[i] == predicted[i]
        draw.text((x + 3, y + h * scale + 1), f"{truth[i]} / {predicted[i]}", fill=(0, 128, 0) if ok else (200, 0, 0))
    sheet.save(path)


