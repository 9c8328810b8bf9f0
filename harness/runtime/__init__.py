"""Running a built artifact: loading, execution modes, OpenBLAS, CPU kernels, generation, the code sandbox."""
