//! The stable driver of the fuzz targets (no nightly, no coverage
//! guidance): `alcove-fuzz TARGET N` runs N inputs of seeded random bytes
//! through the target's function, the same function cargo-fuzz calls.
//!
//! Input `i` of a run with seed `S` depends only on `(S, i)`, so a failure
//! names its reproduction; the failing input is also saved (to
//! `--artifacts`, default `fuzz/artifacts/stable/`) and can be replayed
//! with `--replay FILE`, by this driver or by cargo-fuzz. A panic on any
//! thread (the targets run actors, an agent loop and sockets on threads of
//! their own) fails the input that was running.
//!
//! Exit codes: 0 every input passed, 1 an input failed, 2 bad usage.

use alcove_fuzz::{target, Target, TARGETS};
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Runs N seeded random inputs through a fuzz target.
#[derive(Parser, Debug)]
#[command(name = "alcove-fuzz")]
struct Args {
    /// The target: codec, config, relay, agent or rootfs.
    target: String,
    /// How many inputs (ignored with --replay).
    #[arg(default_value_t = 1000)]
    runs: u64,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where a failing input is saved.
    #[arg(long, default_value = "fuzz/artifacts/stable")]
    artifacts: PathBuf,
    /// Runs this one input (a file saved by a failure, or a cargo-fuzz
    /// artifact) instead of random ones.
    #[arg(long)]
    replay: Option<PathBuf>,
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// SplitMix64: small, seedable, good enough to make fuzz bytes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Input `index` of seed `seed`: a length skewed towards short inputs (most
/// structure lives in the first bytes), then random bytes.
fn input(seed: u64, index: u64, max_len: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index);
    let cap = match rng.next() % 4 {
        0 => 64,
        1 => 512,
        _ => max_len,
    };
    let len = (rng.next() % (cap as u64 + 1)) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs one input; `Err` carries the panic message.
fn run_one(t: Target, data: &[u8]) -> Result<(), String> {
    PANICKED.store(false, Ordering::SeqCst);
    let result = std::panic::catch_unwind(|| (t.run)(data));
    match result {
        Err(e) => Err(e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())),
        Ok(()) if PANICKED.load(Ordering::SeqCst) => Err("a panic on another thread (see above)".into()),
        Ok(()) => Ok(()),
    }
}

fn main() {
    let args = Args::parse();
    let Some(t) = target(&args.target) else {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        eprintln!("alcove-fuzz: no target {:?} (targets: {})", args.target, names.join(", "));
        std::process::exit(2);
    };
    alcove_fuzz::ignore_sigpipe();
    (t.prepare)();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    if let Some(file) = &args.replay {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("alcove-fuzz: cannot read {}: {e}", file.display());
                std::process::exit(2);
            }
        };
        match run_one(t, &data) {
            Ok(()) => println!("{}: {} passed", t.name, file.display()),
            Err(why) => {
                eprintln!("alcove-fuzz: {}: {} failed: {why}", t.name, file.display());
                std::process::exit(1);
            }
        }
        return;
    }
    let start = Instant::now();
    for i in 0..args.runs {
        let data = input(args.seed, i, t.max_len);
        if let Err(why) = run_one(t, &data) {
            let _ = std::fs::create_dir_all(&args.artifacts);
            let file = args.artifacts.join(format!("{}-seed{}-input{}", t.name, args.seed, i));
            let saved = match std::fs::write(&file, &data) {
                Ok(()) => format!("saved to {}", file.display()),
                Err(e) => format!("not saved ({e})"),
            };
            eprintln!(
                "alcove-fuzz: {}: input {i} of seed {} failed after {i} passed: {why}; input {saved}; replay: alcove-fuzz {} --replay {}",
                t.name,
                args.seed,
                t.name,
                file.display()
            );
            std::process::exit(1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {} inputs passed in {:.1} s ({:.0} runs/s, seed {})",
        t.name,
        args.runs,
        secs,
        args.runs as f64 / secs.max(1e-9),
        args.seed
    );
}
