"""Build the marketplace program from ``program/``: codegen, clang-19 to BPF objects, our SBPFv0 linker."""
