//! The `ferry` command line.

fn main() {}
