//! The `concord` command line.

fn main() {}
