//! `alcove-agent`: PID 1 of an alcove sandbox. See the library docs.

fn main() {
    alcove_agent::sys::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match std::panic::catch_unwind(move || alcove_agent::boot::main_with_args(args)) {
        Ok(code) => code,
        // The panic message is already on stderr (the guest log).
        Err(_) => alcove_agent::boot::after_panic(),
    };
    std::process::exit(code);
}
