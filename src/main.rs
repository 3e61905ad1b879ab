//! The `alcove` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sandbox") => {
            let Some(path) = args
                .iter()
                .position(|a| a == "--config")
                .and_then(|i| args.get(i + 1))
            else {
                eprintln!("alcove sandbox: --config FILE is required");
                return ExitCode::from(125);
            };
            ExitCode::from(alcove::standalone::run(std::path::Path::new(path)).clamp(0, 255) as u8)
        }
        _ => {
            eprintln!("usage: alcove sandbox --config FILE");
            ExitCode::from(125)
        }
    }
}
