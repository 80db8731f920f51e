from setuptools import find_packages, setup

setup(
    name="threestudio_like",
    version="0.1.0",
    description="Text to 3D by score distillation (SDS, VSD, ASD, ESD, CSM) on NeRFs and 3D Gaussians",
    packages=find_packages(include=["threestudio_like", "threestudio_like.*"]),
    # the run page's splat viewer; the CPU kernels' C++ sources (compiled on first use)
    package_data={"threestudio_like.page": ["*.js"], "threestudio_like.kernels": ["csrc/*.cpp"]},
    python_requires=">=3.10",
    install_requires=[
        # any installed torch >= 2.1 is accepted; `make` installs the CPU build 2.13.0 when none is present
        "torch>=2.1",
        "numpy>=1.24",
        "omegaconf>=2.3",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "diffusers>=0.30",
        "transformers>=4.40",
        "peft>=0.10",
        "trimesh>=4.0",
        "PyMCubes>=0.1.4",
        "xatlas>=0.0.9",
        "scipy>=1.10",
        "pillow>=9.0",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4.9",
        "matplotlib>=3.7",
        "fast-simplification>=0.1",
        "ninja>=1.11",  # builds the CPU kernels (threestudio_like/kernels) with the system's C++ compiler
    ],
    extras_require={
        "gpu": ["nerfacc>=0.5.3", "gsplat>=1.4", "diffrp-nvdiffrast>=0.3.3"],  # nvdiffrast compiles its plugin on first use (nvcc, ninja)
        # sweeps over a cluster (python -m threestudio_like.sweep); without it they run one after another
        "dist": ["ray>=2.9"],
        "tensorboard": ["tensorboard>=2.10"],
        # the page tests drive the system's Chromium (executable_path): no browser is downloaded
        "test": ["pytest>=7", "ray>=2.9", "playwright>=1.40"],
    },
)
