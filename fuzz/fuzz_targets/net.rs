//! cargo-fuzz target `net`: see `alcove_fuzz::net`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("net").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::net::fuzz(data)
);
