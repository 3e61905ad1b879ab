//! cargo-fuzz target `config`: see `alcove_fuzz::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("config").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::config::fuzz(data)
);
