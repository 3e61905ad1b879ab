//! The `alcove` command; see [`alcove::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = alcove::cli::main();
    ExitCode::from(code.clamp(0, 255) as u8)
}
