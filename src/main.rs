//! The `alcove` command; see [`alcove::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    // Keep 128 KiB+ frame buffers on the heap instead of an mmap/munmap
    // (page faults, zeroing, TLB flush) per frame.
    // SAFETY: mallopt only tunes the allocator; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
    let code = alcove::cli::main();
    ExitCode::from(code.clamp(0, 255) as u8)
}
