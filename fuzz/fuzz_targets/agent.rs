//! cargo-fuzz target `agent`: see `alcove_fuzz::agent`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("agent").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::agent::fuzz(data)
);
