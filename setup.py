"""Packaging for the FAT2019 audio-tagging pipeline.

The protos in proto/ are compiled into pipeline/protos/ at build time (also for editable installs),
so configs are real protobuf messages without a generated file in git. Exact versions of the whole
dependency tree live in constraints.txt (install with `pip install -c constraints.txt -e .[test]`);
the ranges here are what the code needs.
"""
import glob
import os
import re

from setuptools import Command, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
OUT_DIR = os.path.join(HERE, "pipeline", "protos")


def compile_protos():
    """Compile proto/*.proto into pipeline/protos/*_pb2.py with relative imports between them."""
    from grpc_tools import protoc  # build requirement (pyproject.toml)

    protos = sorted(glob.glob(os.path.join(PROTO_DIR, "*.proto")))
    for proto in protos:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={OUT_DIR}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    for generated in glob.glob(os.path.join(OUT_DIR, "*_pb2.py")):
        with open(generated, encoding="utf-8") as f:
            text = f.read()
        # protoc writes `import x_pb2` for imports between our protos; make them package-relative.
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        with open(generated, "w", encoding="utf-8") as f:
            f.write(text)


class BuildProtos(Command):
    description = "compile proto/*.proto into pipeline/protos"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        compile_protos()


class BuildPy(build_py):
    def run(self):
        compile_protos()
        super().run()


class Develop(develop):
    def run(self):
        compile_protos()
        super().run()


setup(
    name="fat-audio-pipeline",
    version="0.1.0",
    description="Freesound Audio Tagging 2019 as a TFX / Apache Beam / tf.data production pipeline",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*"]),
    py_modules=["beam_runner"],
    cmdclass={"build_protos": BuildProtos, "build_py": BuildPy, "develop": Develop},
    install_requires=[
        "tensorflow==2.21.0",
        "tfx==1.21.0",
        "apache-beam[gcp]==2.77.0",
        "soundfile>=0.12",
        "soxr>=0.5",
        "numpy>=1.26,<3",
        "pandas>=2.0,<3",
        "scikit-learn==1.5.2",
        "scipy>=1.15",               # the Evaluator's paired bootstrap (scipy.stats.bootstrap, rng=)
        "protobuf>=6.31.1,<7",
        "matplotlib>=3.8",
        "tensorboard==2.21.0",
        "google-crc32c>=1.5",
        "psutil>=5.9",
        # Beam's DaskRunner (apache-beam's "dask" extra asks for dask/distributed >= 2024.4.2): the
        # distributed engine the feature job is tested on (--runner=DaskRunner)
        "dask[distributed]==2026.8.0",
        # KubeflowV2DagRunner's compiler needs only the pipeline spec protos (not kfp itself);
        # the range is TFX 1.21's own for its kfp extra
        "kfp-pipeline-spec>=0.3.0,<2.17.0",
    ],
    # librosa is the reference the feature tests (and bench/'s seed loop) compare against; the
    # pipeline itself does not import it (pipeline/features/mel_filters.py builds its filterbank)
    extras_require={"test": ["pytest>=8", "grpcio-tools==1.74.0", "librosa==0.11.0",
                             "cryptography>=42"]},    # tests/tls_certs.py: the TLS test server's CA
    entry_points={
        "console_scripts": [
            "fatp-beam=beam_runner:main",
            "fatp-demo-data=pipeline.data.demo_data:main",
            # through pipeline.logs: TensorFlow's start-up noise filtered before anything imports it
            "fatp-train=pipeline.logs:train",
            "fatp-predict=pipeline.logs:predict",
            "fatp-batch-predict=pipeline.logs:batch_predict",
            "fatp-pipeline=pipeline.logs:run_pipeline",
            "fatp-kubeflow=pipeline.logs:kubeflow",
            "fatp-report=pipeline.logs:report",
        ],
    },
)
