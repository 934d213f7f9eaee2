"""The device runner: latency measurement that runs anywhere, on the host or on an edge device
without torch.

Its modules import only the standard library, numpy and pyarrow at module level (the runtime,
onnxruntime, openvino or tensorrt, is imported when a session is opened) and each other, by
relative imports. So the package is copied verbatim into profiling bundles (as
``scan_edge_runner/``, next to a ``run_bundle.py`` launcher, ``nas_core.latency.bundle``) and run
there as a script::

    python run_bundle.py BUNDLE_DIR --out lut.parquet [--device-name jetson_nano_trt]

It must never import torch, pandas or anything else from ``nas_core`` (the few helpers it shares
with ``nas_core.io`` are mirrored in :mod:`.host`, and a test checks that they agree); the
``device-runner`` import contract in pyproject.toml checks it.

Modules
-------
* :mod:`.host`: machine fingerprint, load average, CPU pinning, atomic writes.
* :mod:`.settings`: the device settings a bundle carries, and the models to time.
* :mod:`.timer`: ``time_callable(run, config)``: warm-up, then timed calls (``perf_counter_ns``
  around each; ``process_time_ns`` with ``options["clock"] = "cpu"``, see ``CLOCKS``) until the
  median is stable; median / p10 / p90 / mean / min in ms.
* :mod:`.sessions`: ``open_session(onnx_path, input_shape, settings)``: one model compiled for
  one runtime under the device profile's settings, with a random input created once.
* :mod:`.table`: the output table (schema and provenance) and the identity a resumed run checks.
* :mod:`.profiling`: ``profile_models(entries, settings, out_path, ...)``: times many models (a
  latency lookup table), with a drift-detecting reference model, atomic checkpoints and resume.
* :mod:`.cli`: ``main(argv)``: the bundle runner (``manifest.json`` + ONNX files -> Parquet).

``nas_core.latency.timing`` re-exports the public names for the host.
"""
