//! `postern`: the one binary. It parses arguments and wires the crates together.
fn main() {}
