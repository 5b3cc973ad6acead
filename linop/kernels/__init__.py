"""Optional fast paths. The pure-torch code in `linop.kernels.hash` is the reference that
every fast path (the Triton kernel on CUDA) is tested against."""
