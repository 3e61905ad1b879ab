mod bundle;
fn main() {}
