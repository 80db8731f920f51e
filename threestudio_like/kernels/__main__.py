"""``python -m threestudio_like.kernels``: build the CPU kernels now (``make install`` runs it), so
that the first training run is not the one that waits for the compiler. Exits 0 either way: without
a compiler everything still runs on the torch path."""
from threestudio_like.kernels.build import build_report

if __name__ == "__main__":
    print(build_report())
