//! Kill points, for the fault tests only (cargo feature `failpoints`;
//! without it [`kill_point!`](crate::kill_point) expands to nothing).
//!
//! `ALCOVE_KILL_AT=NAME` in the environment of the CLI or of the sandbox
//! process (which inherits the CLI's) makes that process SIGKILL itself
//! when it reaches kill point `NAME` — as `kill -9` at exactly that step.
//! Names, in the order a sandbox's life reaches them:
//!
//! | name | process | where |
//! |---|---|---|
//! | `cli-before-sandbox-row` | CLI (`run`, `create`) | before the sandbox row is written |
//! | `cli-after-sandbox-row` | CLI | after it, before the sandbox process gets its config |
//! | `cli-after-ready` | CLI | once the sandbox answers, before the command or the reply |
//! | `sandbox-before-running` | sandbox | the agent is ready, Running not yet recorded |
//! | `sandbox-after-ready` | sandbox | Running recorded, clients let in |
//! | `sandbox-during-exec` | sandbox | an exec session's request reached the relay |
//! | `sandbox-during-stop` | sandbox | the reason is fixed, the guest not yet told to stop |
//! | `sandbox-during-finalisation` | sandbox | the guest has ended, the run's end not yet written |
//! | `sandbox-after-run-end` | sandbox (or a CLI that ends a dead run) | the run's end is committed by `run_end::finish`, agent.sock not yet removed |

/// Arms the kill point named by `ALCOVE_KILL_AT`, if any. Called first
/// thing by the CLI and by the sandbox process.
pub fn install() {
    #[cfg(feature = "failpoints")]
    if let Ok(name) = std::env::var("ALCOVE_KILL_AT") {
        let _ = fail::cfg_callback(name, || {
            // SAFETY: raise has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        });
    }
}

/// A kill point (see the module docs); nothing without the `failpoints`
/// feature.
#[macro_export]
macro_rules! kill_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        ::fail::fail_point!($name);
    };
}
