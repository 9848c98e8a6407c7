import os

# Keep torch and BLAS to the machine's cores when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
