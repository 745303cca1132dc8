"""OneRec model: T5 with a sparse-MoE decoder and session-wise generation (issue 4; not built yet)."""
