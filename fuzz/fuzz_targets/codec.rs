//! cargo-fuzz target `codec`: see `alcove_fuzz::codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("codec").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::codec::fuzz(data)
);
