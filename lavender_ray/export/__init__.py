"""`lavender export`: a trained run as one folder to serve or share.

    result = export_run("outputs/demo-<time>", "exports/demo", merge=True)
    print(describe(result))

The input is a run folder, a checkpoint or a saved run (`runs.locate`, local folders only). The
output folder::

    vlm/                  the PEFT adapter + lavender_vlm.json (what `runs.load_trained` reads)
    aligner.safetensors   the Aligner
    config.yaml           the resolved config of the run
    <processor files>     the processor and tokenizer (`save_pretrained`), for AutoProcessor
    README.md             the model card (`card`): data, method, metrics, evaluation, loading
    merged/               with merge: the full model, LoRA merged in, + processor (`merged`)

Every part is verified after writing (`train.export.verify_export` for the adapter and the
Aligner, `merged.verify_merged` for the merged weights, the processor loaded back);
`push_to_hub` then uploads the folder (`hub`).
"""

from lavender_ray.export.bundle import ExportResult, describe, export_run

__all__ = ["ExportResult", "describe", "export_run"]
