"""The MPI runtime: rank 0 orchestrates, ranks 1..R host and train virtual clients."""
