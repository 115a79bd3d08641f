//! The simulator: a deterministic discrete-event model of one GPU host, its inference
//! engine and a Hermes board, on which dispatch strategies are compared.
