"""What a bundle tells the runner: the device settings and the models to time.

Settings
--------
A plain dict (``DeviceProfile.to_settings()`` on the host, ``manifest["settings"]`` in a
bundle): ``name`` (device profile), ``backend`` (onnxruntime | openvino | tensorrt; the
host adds torch), ``provider`` (ORT execution provider, OpenVINO device, ...),
``precision`` (fp32 | fp16 | bf16 | default = the plugin's own choice), ``threads``,
``batch_size``, ``resolution``, ``options`` (runtime-specific extras, see the sessions).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SETTINGS_KEYS = ("name", "backend", "provider", "precision", "threads", "batch_size", "resolution", "options")
ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt")


def normalise_settings(settings: Any) -> dict:
    """A settings dict with every key present; accepts a DeviceProfile (``to_settings``)."""
    if hasattr(settings, "to_settings"):
        settings = settings.to_settings()
    unknown = set(settings) - set(SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"unknown settings keys {sorted(unknown)}; known: {', '.join(SETTINGS_KEYS)}")
    missing = {"backend", "provider", "precision", "threads"} - set(settings)
    if missing:
        raise ValueError(f"settings lack {sorted(missing)}")
    out = {"name": settings.get("name") or settings["backend"], "batch_size": 1, "resolution": 224, "options": {}}
    out.update(settings)
    out["threads"] = int(out["threads"])
    out["batch_size"] = int(out["batch_size"])
    out["resolution"] = int(out["resolution"])
    out["options"] = dict(out["options"] or {})
    return out


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model to time: an id, its ONNX file (None when a custom opener builds it), its input shape."""

    id: str
    path: Path | None
    input_shape: tuple[int, ...]

    @classmethod
    def from_any(cls, entry: Any, base_dir: Path | None = None) -> "ModelEntry":
        if isinstance(entry, ModelEntry):
            return entry
        path = entry.get("path") or entry.get("onnx")
        if path is not None:
            path = Path(path)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
        return cls(id=str(entry["id"]), path=path, input_shape=tuple(int(d) for d in entry["input_shape"]))

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.input_shape)
