"""Inference: translate label maps to photos with a trained generator, and export it.

    from p2p_dist.train.trained_generator import load_generator     # the generator of a run directory
    from p2p_dist.inference.label_maps import list_label_maps
    from p2p_dist.inference.translate import translate_paths
    from p2p_dist.inference.export import export_generator

    generator, cfg = load_generator("runs/demo")                      # latest checkpoint, cuda if available
    translate_paths(generator, cfg, list_label_maps(Path("labels/")), Path("out/"), batch_size=8)
    export_generator(generator, cfg, Path("generator.onnx"), format="onnx", dropout=False)

Modules: ``label_maps`` (reading label-map files, decoding them to ids, encoding ids for the generator),
``translate`` (label-map files in, photo files out), ``export`` (TorchScript / ONNX with a JSON sidecar).

Test-time behaviour (dropout, norm layers) and the sizes a generator takes: see ``translate``.
"""
