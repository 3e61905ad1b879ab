//! cargo-fuzz target `route`: see `alcove_fuzz::route`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("route").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::route::fuzz(data)
);
