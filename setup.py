from setuptools import find_packages, setup

setup(
    name="evalkit",
    version="0.1.0",
    description="Exact, score-first evaluation (val_bpb) of parameter-golf language models",
    packages=find_packages(include=["evalkit", "evalkit.*", "trainer", "trainer.*", "caches", "caches.*"]),
    package_data={"trainer": ["presets/*.toml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.5",  # F.scaled_dot_product_attention(enable_gqa=...) arrived in 2.5
        "numpy>=1.26",
        "numba>=0.59",
        "sentencepiece>=0.2",
        "peft>=0.11",
        "tqdm>=4.66",
        "scipy>=1.11",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "compress": ["zstandard>=0.22", "brotli>=1.2"],
        "gpu": ["flash-attn>=2.5"],
    },
)
