//! cargo-fuzz target `relay`: see `alcove_fuzz::relay`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("relay").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::relay::fuzz(data)
);
