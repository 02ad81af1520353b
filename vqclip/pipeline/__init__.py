"""A generation is one pass, each step done once by one function in the module named for it:

    validate    validate.validate(cfg) -> Request      no model needed: prompts parsed, inputs read, seed fixed
    load        vqclip.pipeline.load.load_models()   once per process (a batch reuses them)
    prepare     prepare.prepare(request, models) -> Job size, memory plan, prompt embeddings, notes
    run         run.run(job, models) -> Result         the guided stage (guided.py) or the canvas (canvas.py)
    write       write.write(job, models, out)          runs the job, writes the PNG and frames, keeps what a
                                                       signal or a failed write leaves

`run.generate()` does the first four for the Python API (`vqclip.generate`); `batch.py` loops over a prompt file.
Nothing is imported here, so `import vqclip.pipeline.validate` stays free of torch.
"""


def __getattr__(name):
    """`from vqclip.pipeline import generate, Result`, as when this was one module."""
    if name in ("generate", "Result"):
        import importlib

        return getattr(importlib.import_module("vqclip.pipeline.run"), name)
    raise AttributeError(f"module 'vqclip.pipeline' has no attribute {name!r}")
