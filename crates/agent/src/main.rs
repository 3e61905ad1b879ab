//! `alcove-agent`: PID 1 of an alcove sandbox. See the library docs.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(alcove_agent::boot::main_with_args(args));
}
