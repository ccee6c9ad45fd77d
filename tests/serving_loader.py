"""Load a SavedModel the way TensorFlow Serving does, for tests: the TF1 loader restores the
variables by name into a Session (C++ SavedModelBundle does the same), and a signature runs by the
tensor names in its SignatureDef. `tf.saved_model.load` is not enough: it restores variables
through the object graph, a path TF Serving never takes (DESIGN.md, decision 7)."""
from __future__ import annotations

import tensorflow as tf


class ServedModel:
    def __init__(self, saved_model_dir: str):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], saved_model_dir)
        self.signatures = dict(meta.signature_def)

    def run(self, signature: str, **inputs) -> dict:
        """{output name: numpy array} of `signature` fed with `inputs` (by input name)."""
        sig = self.signatures[signature]
        unknown = set(inputs) - set(sig.inputs)
        if unknown:
            raise KeyError(f"{signature} has no inputs {sorted(unknown)}; it has {sorted(sig.inputs)}")
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        names = sorted(sig.outputs)
        values = self.session.run([sig.outputs[k].name for k in names], feed)
        return dict(zip(names, values))

    def close(self):
        self.session.close()
